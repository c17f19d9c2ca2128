"""The one reference Llama transformer.

Pre-norm RMSNorm, SwiGLU feed-forward, rotary position embeddings (Meta's interleaved layout,
with Llama 3.1 frequency scaling), grouped-query attention and a preallocated KV cache. Every
projection is an ``nn.Linear`` (minus random init) named as in Meta's checkpoints, so a Meta state dict loads
as it is; backends quantize or shard the linears after construction.

Build it on the meta device and assign memory-mapped weights (``build_model``): no random
init, no second copy.
"""

from __future__ import annotations

import gc
import math

import torch
import torch.nn.functional as F
from torch import nn

from llamahub.model.args import ModelArgs, RopeScaling


class Linear(nn.Linear):
    """``nn.Linear`` without bias or random init: weights always come from a checkpoint."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        """No init: random init of meta tensors costs ~1 s of imports and is overwritten anyway."""


class Embedding(nn.Embedding):
    """``nn.Embedding`` without random init (see ``Linear``)."""

    def reset_parameters(self) -> None:
        """No init; weights are assigned from the checkpoint."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (F.rms_norm is slower than these few ops on CPU in this torch)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies of RoPE, with Llama 3.1's smooth low-frequency scaling when given."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return freqs.float()
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    out = torch.where(wavelen > low_wavelen, freqs / scaling.factor, blended)
    out = torch.where(wavelen < high_wavelen, freqs, out)
    return out.float()


def rope_table(args: ModelArgs, length: int) -> torch.Tensor:
    """Rotations for positions [0, length) as unit complex numbers: [length, head_dim/2] complex64."""
    freqs = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, table: torch.Tensor, layout: str = "interleaved") -> torch.Tensor:
    """Rotate pairs of x [B, T, H, D] by the rotations in table [T, D/2]; float32 result.

    ``interleaved`` (Meta's checkpoints) pairs (x[2i], x[2i+1]); ``half`` (Hugging Face's, whose
    q/k rows are permuted) pairs (x[i], x[i + D/2]). The same weights in either layout give
    the same attention scores.
    """
    rot = table[None, :, None, :]
    if layout == "interleaved":
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * rot).flatten(-2)
    x0, x1 = x.float().chunk(2, dim=-1)
    out = torch.complex(x0, x1) * rot
    return torch.cat([out.real, out.imag], dim=-1)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, rope_layout: str = "interleaved") -> None:
        super().__init__()
        self.rope_layout = rope_layout
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.head_dim = args.head_dim
        self.wq = Linear(args.dim, args.n_heads * self.head_dim)
        self.wk = Linear(args.dim, self.n_kv_heads * self.head_dim)
        self.wv = Linear(args.dim, self.n_kv_heads * self.head_dim)
        self.wo = Linear(args.n_heads * self.head_dim, args.dim)
        self.cache_k: torch.Tensor | None = None
        self.cache_v: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, start: int, table: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        # Attention runs in float32 whatever the weights' dtype: the cache is float32 too.
        q = apply_rope(self.wq(x).view(bsz, seqlen, -1, self.head_dim), table, self.rope_layout)
        k = apply_rope(self.wk(x).view(bsz, seqlen, -1, self.head_dim), table, self.rope_layout)
        v = self.wv(x).view(bsz, seqlen, -1, self.head_dim).float()
        if self.cache_k is None or self.cache_v is None:
            raise RuntimeError("KV cache not set up: call Transformer.setup_cache first")
        end = start + seqlen
        self.cache_k[:bsz, :, start:end] = k.transpose(1, 2)
        self.cache_v[:bsz, :, start:end] = v.transpose(1, 2)
        keys, values = self.cache_k[:bsz, :, :end], self.cache_v[:bsz, :, :end]
        if seqlen == 1:
            out = _decode_attention(q, keys, values)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask,
                enable_gqa=self.n_kv_heads != self.n_heads,
            ).transpose(1, 2)
        return self.wo(out.reshape(bsz, seqlen, -1).to(x.dtype))


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention of one new token (q [B, 1, H, D]) over the cache ([B, KV, S, D]).

    Plain matmuls: for a single query they cost a fraction of the fused SDPA kernel's setup.
    Query heads are grouped by the KV head they share (GQA) instead of repeating the cache.
    """
    bsz, _, n_heads, head_dim = q.shape
    n_kv = keys.shape[1]
    qg = q.view(bsz, n_kv, n_heads // n_kv, head_dim)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * head_dim**-0.5
    return torch.matmul(torch.softmax(scores, dim=-1), values).view(bsz, 1, n_heads, head_dim)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden_dim)
        self.w2 = Linear(hidden_dim, dim)
        self.w3 = Linear(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, rope_layout: str = "interleaved") -> None:
        super().__init__()
        self.attention = Attention(args, rope_layout)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, start: int, table: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start, table, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, rope_layout: str = "interleaved") -> None:
        super().__init__()
        if rope_layout not in ("interleaved", "half"):
            raise ValueError(f"rope_layout must be 'interleaved' or 'half', not {rope_layout!r}")
        self.args = args
        self.rope_layout = rope_layout
        self.tok_embeddings = Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, rope_layout) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size)
        self.rope: torch.Tensor | None = None
        self.cache_batch = 0
        self.cache_len = 0
        self.kernel = "aten"  # what runs the linears; backends that swap them say so here

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        """Preallocate the KV cache (float32, whatever the weights' dtype) and the RoPE table.

        Growing keeps what the cache already holds, so a decode can run past the first size.
        """
        if max_batch <= self.cache_batch and max_seq_len <= self.cache_len:
            return
        max_batch, max_seq_len = max(max_batch, self.cache_batch), max(max_seq_len, self.cache_len)
        dtype = torch.float32
        shape = (max_batch, self.args.kv_heads, max_seq_len, self.args.head_dim)
        for layer in self.layers:
            attn = layer.attention
            new_k, new_v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
            if attn.cache_k is not None and attn.cache_v is not None:
                b, _, n, _ = attn.cache_k.shape
                new_k[:b, :, :n] = attn.cache_k
                new_v[:b, :, :n] = attn.cache_v
            attn.cache_k, attn.cache_v = new_k, new_v
        self.rope = rope_table(self.args, max_seq_len)
        self.cache_batch, self.cache_len = max_batch, max_seq_len

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) for tokens [B, T] placed at positions start..start+T-1."""
        bsz, seqlen = tokens.shape
        if self.rope is None or bsz > self.cache_batch or start + seqlen > self.cache_len:
            # grow in steps of 256 positions so a long decode reallocates rarely
            self.setup_cache(bsz, -(-(start + seqlen) // 256) * 256)
        assert self.rope is not None
        table = self.rope[start:start + seqlen]
        mask = None
        if seqlen > 1:
            pos = torch.arange(start + seqlen)
            mask = pos[None, :] <= (pos[start:, None])
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, start, table, mask)
        return self.output(self.norm(h)).float()


def build_model(args: ModelArgs, state_dict: dict[str, torch.Tensor],
                dtype: torch.dtype | None = None, *, rope_layout: str = "interleaved") -> Transformer:
    """Construct on the meta device and assign ``state_dict`` tensors without copying them.

    Tensors already in ``dtype`` (e.g. memory-mapped from the checkpoint) are used in place;
    others are converted once. Missing or unexpected keys raise (strict loading).
    """
    paused = gc.isenabled()
    gc.disable()  # hundreds of small objects: a cyclic-GC pass here costs ~0.1 s for nothing
    try:
        with torch.device("meta"):
            model = Transformer(args, rope_layout)
    finally:
        if paused:
            gc.enable()
    if args.tie_embeddings and "output.weight" not in state_dict:
        state_dict = {**state_dict, "output.weight": state_dict["tok_embeddings.weight"]}
    if dtype is not None:
        state_dict = {k: v if v.dtype == dtype else v.to(dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()
