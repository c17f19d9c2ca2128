"""The settings of the ``lora`` and ``full`` methods (pydantic), and the shipped TOML configs.

A config is data: ``configs/<name>.toml`` holds a method's settings; ``llamahub finetune
--config FILE`` reads one, and keyword arguments override it. Unknown keys are refused with the
list of known ones.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamahub.errors import ConfigError

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PROJECTIONS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")
# Hugging Face's module names for the same projections (what PEFT's target_modules say)
HF_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
            "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head"}
_FROM_HF = {v: k for k, v in HF_NAMES.items()}


class TrainConfig(BaseModel):
    """What every method shares: the loop, the data and the machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps
    batch_size: int = Field(8, ge=1)  # examples per step, across every data-parallel rank
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_fraction: float = Field(0.1, ge=0.0, le=0.5)  # records held out for the eval loss
    eval_every: int = Field(50, ge=1)  # steps between eval-loss measurements
    checkpoint_every: int = Field(50, ge=1)  # steps between resumable checkpoints
    resume: bool = True  # continue from the job's last checkpoint when one fits
    packing: bool = False  # pack examples into rows (block-diagonal masks) instead of padding
    seq_len: int | None = Field(None, ge=2)  # row length when packing (default: the context)
    truncate: bool = False  # cut records longer than the context instead of refusing them
    dtype: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    processes: int = Field(1, ge=1, le=64)  # data-parallel ranks (gloo on CPU, NCCL on GPUs)
    # how ranks share the work: DDP (every rank holds the weights) or FSDP (sharded; full and qat)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # mixed precision of the forward: auto = bf16 autocast on a GPU, none on the CPU
    autocast: Literal["auto", "off", "bf16"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch threads per rank


class FullConfig(TrainConfig):
    method: Literal["full"] = "full"


class LoraConfig(TrainConfig):
    method: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: Fraction = 0.0
    # Meta names (wq, ..., output for the head) or Hugging Face's (q_proj, ..., lm_head)
    targets: tuple[str, ...] = ("wq", "wv")

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for name in value:
            meta = _FROM_HF.get(name, name)
            if meta not in PROJECTIONS:
                raise ValueError(f"{name!r} is not a projection: use {', '.join(PROJECTIONS)} "
                                 f"or {', '.join(HF_NAMES.values())}")
            out.append(meta)
        if not out:
            raise ValueError("name at least one projection")
        return tuple(dict.fromkeys(out))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class QatConfig(TrainConfig):
    """Full fine-tuning with the chosen projections fake-quantized (see ``qat.py``)."""

    method: Literal["qat"] = "qat"
    bits: Literal[4, 8] = 4
    # the backend whose int<bits> scheme is trained and shipped (default: the first by priority
    # that offers one, the cpu backend here); its load with dtype int<bits> maps the result as is
    backend: str | None = None
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(dict.fromkeys(_FROM_HF.get(name, name) for name in value))
        bad = [name for name in out if name not in PROJECTIONS[:-1]]
        if bad or not out:
            blocks = ", ".join(PROJECTIONS[:-1])
            raise ValueError(f"{bad or 'nothing'}: name projections of the blocks, {blocks}")
        return out


MODELS: dict[str, type[TrainConfig]] = {"lora": LoraConfig, "full": FullConfig, "qat": QatConfig}


def parse(method: str, data: Mapping[str, Any]) -> TrainConfig:
    """Validate ``data`` as ``method``'s settings; ConfigError names each bad key."""
    model = MODELS[method]
    fields = {k: v for k, v in data.items() if k != "method"}
    if data.get("method", method) != method:
        raise ConfigError(f"this config is for the {data['method']!r} method, not {method!r}",
                          hint=f"pass --method {data['method']}, or use a {method} config")
    try:
        return model(**fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"bad {method} config: {problems}",
                          hint=f"known keys: {', '.join(sorted(model.model_fields))}") from None


def shipped() -> dict[str, Path]:
    """The configs shipped with the plugin, by file stem."""
    root = Path(str(resources.files(__package__))) / "configs"
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def read(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))
