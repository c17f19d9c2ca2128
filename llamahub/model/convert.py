"""Pure tensor rules between checkpoint layouts.

- Meta's tensor-parallel shards: which tensors join on which dimension.
- Hugging Face names and the q/k row permutation between the two RoPE layouts (Meta rotates
  interleaved pairs; transformers rotates the two halves of each head).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from llamahub.errors import CorruptCheckpointError
from llamahub.model.args import ModelArgs

# Column-parallel (output rows split) and row-parallel (input columns split) linears.
_SPLIT_DIM0 = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
               "feed_forward.w1.weight", "feed_forward.w3.weight")
_SPLIT_DIM1 = ("attention.wo.weight", "feed_forward.w2.weight")
_REPLICATED = ("attention_norm.weight", "ffn_norm.weight")
IGNORED_META_KEYS = ("rope.freqs",)


def shard_dim(key: str, embedding_dim: int) -> int | None:
    """Dimension along which Meta shards ``key``; None when the tensor is replicated."""
    if key == "tok_embeddings.weight":
        return embedding_dim
    if key == "output.weight":
        return 0
    if key == "norm.weight" or key.endswith(_REPLICATED):
        return None
    if key.endswith(_SPLIT_DIM0):
        return 0
    if key.endswith(_SPLIT_DIM1):
        return 1
    raise CorruptCheckpointError(f"unexpected tensor {key!r} in a Meta checkpoint",
                                 hint="is this a Llama checkpoint? compare its keys with Meta's layout")


def embedding_split_dim(shard0_shape: torch.Size, dim: int, n_shards: int) -> int:
    """Llama 1/2 split the embedding on dim 1 (ParallelEmbedding), Llama 3+ on dim 0."""
    if n_shards == 1 or shard0_shape[1] == dim:
        return 0
    if shard0_shape[1] * n_shards == dim:
        return 1
    raise CorruptCheckpointError(
        f"tok_embeddings shard has shape {tuple(shard0_shape)}, which fits neither split of dim {dim}",
        hint="the shards do not belong to this params.json",
    )


def merge_shards(shards: list[Mapping[str, torch.Tensor]], dim: int) -> dict[str, torch.Tensor]:
    """Join Meta's model-parallel shards into one state dict (norms come from shard 0)."""
    first = shards[0]
    emb_dim = embedding_split_dim(first["tok_embeddings.weight"].shape, dim, len(shards))
    merged: dict[str, torch.Tensor] = {}
    for key in first:
        if key in IGNORED_META_KEYS:
            continue
        parts = [s.get(key) for s in shards]
        if any(p is None for p in parts):
            raise CorruptCheckpointError(f"tensor {key!r} is missing from some shards",
                                         hint="re-download the checkpoint")
        along = shard_dim(key, emb_dim)
        merged[key] = parts[0] if along is None or len(parts) == 1 else torch.cat(parts, dim=along)
    return merged


def split_shards(state: Mapping[str, torch.Tensor], n: int, *, embedding_dim: int) -> list[dict]:
    """Cut a full state dict into ``n`` Meta shards (inverse of ``merge_shards``)."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, t in state.items():
        along = shard_dim(key, embedding_dim)
        pieces = [t] * n if along is None else list(t.chunk(n, dim=along))
        if along is not None and t.shape[along] % n:
            raise CorruptCheckpointError(f"{key} of shape {tuple(t.shape)} cannot split in {n} shards",
                                         hint="choose a shard count that divides the heads")
        for shard, piece in zip(shards, pieces, strict=True):
            shard[key] = piece.clone()
    return shards


# --- Hugging Face ---------------------------------------------------------------------------

_HF_LAYER = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_HF_TOP = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
_META_LAYER = {v: k for k, v in _HF_LAYER.items()}
_META_TOP = {v: k for k, v in _HF_TOP.items()}
_LAYER_RE = re.compile(r"^(model\.)?layers\.(\d+)\.(.+)\.weight$")


def _permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary rows -> HF's half-split rows (per head)."""
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def meta_rows_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection (or of anything with its rows, e.g. a LoRA B matrix) from Meta's
    interleaved RoPE order to Hugging Face's half-split order."""
    return _permute(w, n_heads)


def hf_rows_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of ``meta_rows_to_hf``."""
    return _unpermute(w, n_heads)


def hf_key_to_meta(key: str) -> str:
    if (m := _LAYER_RE.match(key)) and m.group(1):
        if m.group(3) not in _HF_LAYER:
            raise CorruptCheckpointError(f"unexpected tensor {key!r} in an HF checkpoint",
                                         hint="only LlamaForCausalLM checkpoints are supported")
        return f"layers.{m.group(2)}.{_HF_LAYER[m.group(3)]}.weight"
    base = key.removesuffix(".weight")
    if base in _HF_TOP and key.endswith(".weight"):
        return f"{_HF_TOP[base]}.weight"
    raise CorruptCheckpointError(f"unexpected tensor {key!r} in an HF checkpoint",
                                 hint="only LlamaForCausalLM checkpoints are supported")


def meta_key_to_hf(key: str) -> str:
    if (m := _LAYER_RE.match(key)) and not m.group(1):
        return f"model.layers.{m.group(2)}.{_META_LAYER[m.group(3)]}.weight"
    return f"{_META_TOP[key.removesuffix('.weight')]}.weight"


def hf_to_meta(state: Mapping[str, torch.Tensor], args: ModelArgs, *,
               permute: bool = True) -> dict[str, torch.Tensor]:
    """HF names -> Meta names. ``permute=False`` keeps HF's q/k row order (for rope_layout="half")."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        mk = hf_key_to_meta(key)
        if permute and mk.endswith("attention.wq.weight"):
            t = _unpermute(t, args.n_heads)
        elif permute and mk.endswith("attention.wk.weight"):
            t = _unpermute(t, args.kv_heads)
        out[mk] = t
    return out


def meta_to_hf(state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key == "output.weight" and args.tie_embeddings:
            continue
        if key.endswith("attention.wq.weight"):
            t = _permute(t, args.n_heads)
        elif key.endswith("attention.wk.weight"):
            t = _permute(t, args.kv_heads)
        out[meta_key_to_hf(key)] = t.contiguous()
    return out


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of a full (merged) Meta state dict for ``args``."""
    d, hd, kv = args.dim, args.hidden_dim, args.kv_heads * args.head_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, d),
                                          "norm.weight": (d,)}
    if not args.tie_embeddings:
        shapes["output.weight"] = (args.vocab_size, d)
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (args.n_heads * args.head_dim, d),
            p + "attention.wk.weight": (kv, d), p + "attention.wv.weight": (kv, d),
            p + "attention.wo.weight": (d, args.n_heads * args.head_dim),
            p + "feed_forward.w1.weight": (hd, d), p + "feed_forward.w3.weight": (hd, d),
            p + "feed_forward.w2.weight": (d, hd),
            p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,),
        }
    return shapes


def check_shapes(state: Mapping[str, torch.Tensor], args: ModelArgs, what: str) -> None:
    """Refuse a state dict whose keys or shapes disagree with ``args``."""
    check_shape_map({k: tuple(v.shape) for k, v in state.items()}, args, what)


def check_shape_map(shapes: Mapping[str, tuple[int, ...]], args: ModelArgs, what: str) -> None:
    """Refuse tensor names/shapes (e.g. read from headers) that disagree with ``args``."""
    want = expected_shapes(args)
    have = {k for k in shapes if not (args.tie_embeddings and k == "output.weight")}
    missing, extra = sorted(set(want) - have), sorted(have - set(want))
    wrong = [f"{k}: {tuple(shapes[k])} != {want[k]}" for k in want
             if k in shapes and tuple(shapes[k]) != want[k]]
    if missing or extra or wrong:
        detail = "; ".join(
            ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else [])
            + wrong[:3]
        )
        raise CorruptCheckpointError(
            f"{what} does not match the architecture ({detail})",
            hint="check that the folder holds the variant you named (`llamahub info NAME`)",
        )
