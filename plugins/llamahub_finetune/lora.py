"""LoRA as a module transform of the reference model, merging, and adapters in PEFT's format.

``add_lora`` swaps chosen projections (on the meta device, before weights are assigned) for
``LoraLinear``: the frozen weight plus ``scaling * B(A(dropout(x)))``, with A [rank, in] and B
[out, rank]. The adapter's tensors are assigned with the base's (``initial_adapter`` for a new
one: A uniform in ±1/sqrt(in) from a seeded generator, B zero, so training starts at the base).

The saved adapter is what ``peft`` writes for transformers' LlamaForCausalLM: ``adapter_config.json``
and ``adapter_model.safetensors`` with Hugging Face module names. Our q/k rows are in Meta's
interleaved RoPE order; Hugging Face's are permuted per head, so B of q/k is permuted the same way
(A multiplies the input side, which no permutation touches).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import llamahub.plugin as lp
from llamahub.errors import ConfigError

from .config import HF_NAMES, LoraConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^(layers\.\d+\.(?:attention|feed_forward)\.w[qkvo123]|output)\.lora_([ab])$")


class LoraLinear(nn.Linear):
    """A frozen projection with a trainable low-rank update. Keeps ``weight`` under its name, so the
    base checkpoint assigns as it is; ``lora_a``/``lora_b`` come with it in the state dict."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float,
                 dropout: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.empty(out_features, rank))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def reset_parameters(self) -> None:
        """No init: every tensor is assigned (base weights, and the adapter's initial values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight) + self.scaling * update

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.scaling * (self.lora_b.float() @ self.lora_a.float()).to(self.weight.dtype)


def add_lora(model: lp.Transformer, cfg: LoraConfig) -> list[str]:
    """Replace the target projections of every block with LoraLinear; their module paths."""
    names = []
    for i, block in enumerate(model.layers):
        for parent_name, parent in (("attention", block.attention), ("feed_forward", block.feed_forward)):
            for proj in cfg.targets:
                old = getattr(parent, proj, None)
                if old is None:
                    continue
                with torch.device("meta"):
                    new = LoraLinear(old.in_features, old.out_features, cfg.rank, cfg.scaling, cfg.dropout)
                setattr(parent, proj, new)
                names.append(f"layers.{i}.{parent_name}.{proj}")
    if "output" in cfg.targets:  # the head: lets a tiny or oddly scaled model sharpen its logits
        old = model.output
        with torch.device("meta"):
            model.output = LoraLinear(old.in_features, old.out_features, cfg.rank, cfg.scaling, cfg.dropout)
        names.append("output")
    return names


def initial_adapter(model: lp.Transformer, seed: int) -> dict[str, torch.Tensor]:
    """A fresh adapter for every LoraLinear of ``model``: A uniform(±1/sqrt(in)), B zero."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            rank, fan_in = module.lora_a.shape
            bound = 1 / math.sqrt(fan_in)
            out[f"{name}.lora_a"] = (torch.rand(rank, fan_in, generator=gen) * 2 - 1) * bound
            out[f"{name}.lora_b"] = torch.zeros(module.out_features, rank)
    return out


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full weights with every adapter folded in (Meta naming, plain projections)."""
    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        owner = key.removesuffix(".weight")
        out[key] = (lora[owner].merged_weight() if owner in lora else value).detach().clone()
    return out


# --- PEFT's format ------------------------------------------------------------------------


def _rows(key: str, args: lp.ModelArgs) -> int | None:
    """Heads whose RoPE rows a tensor's output rows follow (q: n_heads, k: kv_heads), else None."""
    if key.endswith("attention.wq"):
        return args.n_heads
    if key.endswith("attention.wk"):
        return args.kv_heads
    return None


def save_adapter(folder: Path, adapter: Mapping[str, torch.Tensor], cfg: LoraConfig, args: lp.ModelArgs,
                 base: str) -> list[str]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as peft does; the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in adapter.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"not an adapter tensor: {key}")
        module = key.rsplit(".", 1)[0]
        hf = lp.meta_key_to_hf(f"{module}.weight").removesuffix(".weight")
        t = value.detach().float().contiguous()
        heads = _rows(module, args)
        if m.group(2) == "b" and heads is not None:
            t = lp.meta_rows_to_hf(t, heads).contiguous()
        tensors[f"{_PREFIX}{hf}.lora_{m.group(2).upper()}.weight"] = t
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": sorted(HF_NAMES[t] for t in cfg.targets), "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return [CONFIG_FILE, WEIGHTS_FILE]


def read_adapter(folder: Path, args: lp.ModelArgs) -> tuple[LoraConfig, dict[str, torch.Tensor], str]:
    """(settings, tensors in our naming and RoPE order, base name) of a PEFT LoRA adapter folder."""
    try:
        config: dict[str, Any] = json.loads((folder / CONFIG_FILE).read_text())
        raw = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder} is not a PEFT adapter ({e})",
                          hint=f"pass the folder holding {CONFIG_FILE} and {WEIGHTS_FILE}") from e
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise ConfigError(f"{folder} holds a {config.get('peft_type')} adapter llamahub cannot apply",
                          hint="only plain LoRA adapters (no DoRA, no rsLoRA) load here")
    targets = config.get("target_modules") or []
    cfg = LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                     dropout=float(config.get("lora_dropout", 0.0)),
                     targets=tuple(targets) if isinstance(targets, list) else (targets,))
    tensors = {}
    for key, value in raw.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$", key)
        if m is None:
            raise ConfigError(f"unexpected tensor {key} in {folder / WEIGHTS_FILE}",
                              hint="only LoRA A/B matrices of LlamaForCausalLM projections load here")
        module = lp.hf_key_to_meta(f"{m.group(1)}.weight").removesuffix(".weight")
        heads = _rows(module, args)
        if m.group(2) == "B" and heads is not None:
            value = lp.hf_rows_to_meta(value, heads)
        tensors[f"{module}.lora_{m.group(2).lower()}"] = value
    return cfg, tensors, str(config.get("base_model_name_or_path") or "")
