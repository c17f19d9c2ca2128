"""Architecture numbers of a Llama model (what Meta's params.json holds, plus the context length)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llamahub.errors import CheckpointError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency scaling of RoPE (``use_scaled_rope`` in Meta's params.json)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_dim: int | None = None  # explicit FFN width; overrides the Meta formula when set
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """FFN width: Meta's formula ``multiple_of * ceil(mult * int(8 * dim / 3) / multiple_of)``."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def param_count(self) -> int:
        d, h, kv = self.dim, self.hidden_dim, self.kv_heads * self.head_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * h + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head

    def validate(self) -> None:
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if self.vocab_size <= 0:
            problems.append(f"vocab_size {self.vocab_size} must be positive")
        if problems:
            raise CheckpointError(
                "invalid model architecture: " + "; ".join(problems),
                hint="check params.json / config.json against the variant in `llamahub info NAME`",
            )

    # --- Meta params.json -------------------------------------------------------------------

    @classmethod
    def from_params(cls, params: dict[str, Any], *, vocab_size: int | None = None,
                    max_seq_len: int = 4096) -> ModelArgs:
        """Build from Meta's params.json. ``vocab_size: -1`` (Llama 2) needs ``vocab_size``."""
        vocab = int(params.get("vocab_size", -1))
        if vocab <= 0:
            if vocab_size is None:
                raise CheckpointError(
                    "params.json has vocab_size -1 and no tokenizer size was given",
                    hint="pass the variant (its registry entry has the vocabulary size)",
                )
            vocab = vocab_size
        scaling = None
        if params.get("use_scaled_rope"):
            scaling = RopeScaling(factor=float(params.get("rope_scaling_factor", 8.0)))
        known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                 "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope",
                 "rope_scaling_factor", "max_seq_len"}
        try:
            args = cls(
                dim=int(params["dim"]),
                n_layers=int(params["n_layers"]),
                n_heads=int(params["n_heads"]),
                n_kv_heads=int(params["n_kv_heads"]) if params.get("n_kv_heads") else None,
                vocab_size=vocab,
                multiple_of=int(params.get("multiple_of", 256)),
                ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
                norm_eps=float(params.get("norm_eps", 1e-5)),
                rope_theta=float(params.get("rope_theta", 10000.0)),
                rope_scaling=scaling,
                max_seq_len=int(params.get("max_seq_len", max_seq_len)),
                extra={k: v for k, v in params.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"params.json is missing or has a bad value for {e}",
                                  hint="compare it with a params.json from Meta's download") from e
        args.validate()
        return args

    def to_params(self, *, llama2_vocab: bool = False) -> dict[str, Any]:
        """Meta params.json. ``llama2_vocab`` writes ``vocab_size: -1`` as Llama 2 files do."""
        params: dict[str, Any] = {"dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads}
        if self.n_kv_heads:
            params["n_kv_heads"] = self.n_kv_heads
        params["vocab_size"] = -1 if llama2_vocab else self.vocab_size
        params["multiple_of"] = self.multiple_of
        if self.ffn_dim_multiplier is not None:
            params["ffn_dim_multiplier"] = self.ffn_dim_multiplier
        params["norm_eps"] = self.norm_eps
        if self.rope_theta != 10000.0:
            params["rope_theta"] = self.rope_theta
        if self.rope_scaling is not None:
            params["use_scaled_rope"] = True
            if self.rope_scaling.factor != 8.0:
                params["rope_scaling_factor"] = self.rope_scaling.factor
        if self.ffn_dim is not None and self.ffn_dim != replace(self, ffn_dim=None).hidden_dim:
            raise CheckpointError(
                f"FFN width {self.ffn_dim} cannot be expressed in Meta's params.json",
                hint="write this checkpoint in the HF format instead",
            )
        return params

    # --- HF config.json ---------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        try:
            scaling = None
            rs = config.get("rope_scaling") or config.get("rope_parameters")
            if rs and rs.get("rope_type", rs.get("type")) == "llama3":
                scaling = RopeScaling(
                    factor=float(rs["factor"]),
                    low_freq_factor=float(rs["low_freq_factor"]),
                    high_freq_factor=float(rs["high_freq_factor"]),
                    original_max_position=int(rs["original_max_position_embeddings"]),
                )
            theta = config.get("rope_theta") or (rs or {}).get("rope_theta") or 10000.0
            args = cls(
                dim=int(config["hidden_size"]),
                n_layers=int(config["num_hidden_layers"]),
                n_heads=int(config["num_attention_heads"]),
                n_kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
                vocab_size=int(config["vocab_size"]),
                ffn_dim=int(config["intermediate_size"]),
                norm_eps=float(config.get("rms_norm_eps", 1e-5)),
                rope_theta=float(theta),
                rope_scaling=scaling,
                max_seq_len=int(config.get("max_position_embeddings", 4096)),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"config.json is missing or has a bad value for {e}",
                                  hint="is this a LlamaForCausalLM config.json?") from e
        if args.n_kv_heads == args.n_heads:
            args = replace(args, n_kv_heads=None)
        args.validate()
        return args

    def to_hf_config(self, *, bos_token_id: int = 1, eos_token_id: int | list[int] = 2,
                     dtype: str = "bfloat16") -> dict[str, Any]:
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_seq_len,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "torch_dtype": dtype,
        }
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            config["rope_scaling"] = {
                "rope_type": "llama3",
                "factor": rs.factor,
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_position,
            }
        return config

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d
