"""The one reference Llama transformer, which every backend transforms.

Pre-norm RMSNorm, SwiGLU feed-forward, rotary position embeddings (Meta's interleaved layout,
with Llama 3.1 frequency scaling), grouped-query attention and a KV cache module. Every
projection is an ``nn.Linear`` (minus random init) named as in Meta's checkpoints, so a Meta
state dict loads as it is.

The life of a model: ``build_meta`` (no memory) → module transforms a backend applies (a kernel
swap, quantized linears, LoRA, a tensor-parallel split) → ``assign_weights`` (memory-mapped
tensors assigned without a copy, on the target device and dtype). ``build_model`` does the first
and last step for callers with no transform.

Device-agnostic: the cache, the RoPE table and the causal mask live on the weights' device.
``forward(tokens, start)`` decodes through the cache (``start`` an int, or a 0-d tensor for
static-shape devices such as XLA); ``forward(tokens, starts, rows=rows)`` decodes each row in its
own cache row at its own positions (the serving slots of continuous batching);
``forward(tokens, use_cache=False)`` is the cache-free causal
forward that training uses. Inference mode is the generation loop's business, not the model's.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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


def rope_table(args: ModelArgs, length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """cos and sin of the rotations for positions [0, length): [length, head_dim/2, 2] float32."""
    freqs = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).to(device)


def apply_rope(x: torch.Tensor, table: torch.Tensor, layout: str = "interleaved") -> torch.Tensor:
    """Rotate pairs of x [B, T, H, D] by table [T, D/2, 2] (cos, sin), or [B, T, D/2, 2] when each
    row sits at its own positions; float32 result.

    ``interleaved`` (Meta's checkpoints) pairs (x[2i], x[2i+1]); ``half`` (Hugging Face's, whose
    q/k rows are permuted) pairs (x[i], x[i + D/2]). The same weights in either layout give
    the same attention scores.
    """
    if table.dim() == 3:
        table = table[None]
    cos, sin = table[:, :, None, :, 0], table[:, :, None, :, 1]
    if layout == "interleaved":
        pairs = x.float().unflatten(-1, (-1, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
    x0, x1 = x.float().chunk(2, dim=-1)
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)


@dataclass
class Step:
    """Where the tokens of one forward call sit: what every attention layer needs to know."""

    table: torch.Tensor  # RoPE rotations of these tokens' positions
    start: int = 0  # first position (int path: the cache is sliced)
    positions: torch.Tensor | None = None  # positions as a tensor (static-shape path)
    mask: torch.Tensor | None = None  # boolean [T, S] attention mask, True = attend
    use_cache: bool = True
    rows: torch.Tensor | None = None  # cache rows of the batch's rows (serving slots); positions [B, T]
    packed: bool = False  # rows are 0..B-1: the cache is sliced, not gathered
    length: int = 0  # with rows: how many cache positions to attend over


class KVCache(nn.Module):
    """Keys and values of past positions: [batch, local kv heads, length, head_dim] buffers.

    Its dtype and device are chosen when the model sets it up (by default the weights'), and it
    moves with the module (``.to()``). The buffers are not part of the state dict.
    """

    def __init__(self, batch: int, kv_heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (batch, kv_heads, length, head_dim)
        with torch.inference_mode(False):  # usable inside and outside inference mode
            self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
            self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def grown(self, batch: int, length: int) -> KVCache:
        """A larger cache holding what this one holds."""
        b, kv, n, d = self.k.shape
        new = KVCache(max(batch, b), kv, max(length, n), d, self.k.dtype, self.k.device)
        with torch.inference_mode(False), torch.no_grad():
            new.k[:b, :, :n] = self.k
            new.v[:b, :, :n] = self.v
        return new

    def update(self, step: Step, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([B, KV, T, D]) at the step's positions; return the keys and values to attend."""
        bsz, _, seqlen, _ = k.shape
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if step.rows is not None:
            return self._update_rows(step, k, v)
        if step.positions is not None:  # static shapes: write in place, attend over the whole cache
            self.k[:bsz].index_copy_(2, step.positions, k)
            self.v[:bsz].index_copy_(2, step.positions, v)
            return self.k[:bsz], self.v[:bsz]
        end = step.start + seqlen
        self.k[:bsz, :, step.start:end] = k
        self.v[:bsz, :, step.start:end] = v
        return self.k[:bsz, :, :end], self.v[:bsz, :, :end]

    def _update_rows(self, step: Step, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row of k, v goes to its own cache row at its own positions."""
        assert step.rows is not None and step.positions is not None
        rows = step.rows[:, None]
        self.k[rows, :, step.positions] = k.transpose(1, 2)
        self.v[rows, :, step.positions] = v.transpose(1, 2)
        if step.packed:
            n = step.rows.shape[0]
            return self.k[:n, :, :step.length], self.v[:n, :, :step.length]
        return self.k[step.rows, :, :step.length], self.v[step.rows, :, :step.length]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, rope_layout: str = "interleaved") -> None:
        super().__init__()
        self.rope_layout = rope_layout
        # Heads held by this module: a tensor-parallel split divides them.
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.head_dim = args.head_dim
        self.wq = Linear(args.dim, args.n_heads * self.head_dim)
        self.wk = Linear(args.dim, self.n_kv_heads * self.head_dim)
        self.wv = Linear(args.dim, self.n_kv_heads * self.head_dim)
        self.wo = Linear(args.n_heads * self.head_dim, args.dim)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = apply_rope(self.wq(x).view(bsz, seqlen, -1, self.head_dim), step.table, self.rope_layout)
        k = apply_rope(self.wk(x).view(bsz, seqlen, -1, self.head_dim), step.table, self.rope_layout)
        v = self.wv(x).view(bsz, seqlen, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = self.n_kv_heads != self.n_heads
        if not step.use_cache:
            v = v.to(q.dtype)
            if step.mask is not None:  # e.g. block-diagonal over packed training examples
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, enable_gqa=gqa)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=seqlen > 1, enable_gqa=gqa)
        else:
            if self.cache is None:
                raise RuntimeError("KV cache not set up: call Transformer.setup_cache first")
            keys, values = self.cache.update(step, k, v)
            q = q.to(keys.dtype)
            # one token alone: plain matmuls; several rows of a server's step (each its own
            # cache row and length, under a mask): one SDPA call, which parallelizes over them
            if seqlen == 1 and (step.positions is None or (step.rows is not None and bsz == 1)):
                out = _decode_attention(q, keys, values, step.mask)
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1).to(x.dtype))


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one new token (q [B, H, 1, D]) over the cache ([B, KV, S, D]).

    Plain matmuls: for a single query they cost a fraction of the fused SDPA kernel's setup.
    Query heads are grouped by the KV head they share (GQA) instead of repeating the cache.
    ``mask`` ([B, 1, 1, S], True = attend) hides the cache positions beyond each row's own.
    """
    bsz, n_heads, _, head_dim = q.shape
    n_kv = keys.shape[1]
    qg = q.reshape(bsz, n_kv, n_heads // n_kv, head_dim)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * head_dim**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(probs, values).view(bsz, n_heads, 1, head_dim)


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

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), step)
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
        self.cache_dtype: torch.dtype | None = None  # None: the weights' dtype
        self.kernel = "aten"  # what runs the linears; backends that swap them say so here

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def cache_batch(self) -> int:
        cache = self.layers[0].attention.cache if len(self.layers) else None
        return cache.batch if cache is not None else 0

    @property
    def cache_len(self) -> int:
        cache = self.layers[0].attention.cache if len(self.layers) else None
        return cache.length if cache is not None else 0

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        """Allocate (or grow, keeping its contents) the KV cache and the RoPE table.

        The cache takes ``cache_dtype`` (default: the dtype of the weights) and the weights' device;
        its heads are each attention module's own (local) kv heads.
        """
        if max_batch <= self.cache_batch and max_seq_len <= self.cache_len:
            return
        dtype = self.cache_dtype or self.norm.weight.dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        for layer in self.layers:
            attn = layer.attention
            if attn.cache is None:
                attn.cache = KVCache(max_batch, attn.n_kv_heads, max_seq_len, attn.head_dim, dtype,
                                     self.device)
            else:
                attn.cache = attn.cache.grown(max_batch, max_seq_len)
        self.rope = rope_table(self.args, max(self.cache_len, max_seq_len), self.device)

    def reset_cache(self) -> None:
        """Drop the KV cache (frees its memory; the next decode sets it up again)."""
        for layer in self.layers:
            layer.attention.cache = None
        self.rope = None

    def forward(self, tokens: torch.Tensor, start: int | torch.Tensor = 0, *,
                use_cache: bool = True, rows: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) for tokens [B, T] at positions start..start+T-1.

        ``start`` as a 0-d tensor takes the static-shape path (the cache must be set up, and the
        tokens attend over its whole length under a mask). ``use_cache=False`` ignores the cache:
        a plain causal forward over ``tokens`` (training, scoring), differentiable; ``mask``
        (boolean, [B, 1, T, T], True = attend) replaces its causal mask there, e.g. to keep
        examples packed in one row from seeing each other. ``rows`` [B] puts row i in cache row
        ``rows[i]`` from position ``start[i]`` (``start`` a [B] tensor).
        """
        bsz, seqlen = tokens.shape
        if not use_cache:
            step = Step(self._table(seqlen)[:seqlen], mask=mask, use_cache=False)
        elif rows is not None:
            step = self._rows_step(rows, torch.as_tensor(start), seqlen)
        elif isinstance(start, torch.Tensor):
            step = self._static_step(start, seqlen)
        else:
            step = self._dynamic_step(bsz, start, seqlen)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, step)
        return self.output(self.norm(h)).float()

    def _table(self, length: int) -> torch.Tensor:
        if self.rope is None or self.rope.shape[0] < length:
            return rope_table(self.args, length, self.device)
        return self.rope

    def _dynamic_step(self, bsz: int, start: int, seqlen: int) -> Step:
        if self.rope is None or bsz > self.cache_batch or start + seqlen > self.cache_len:
            # grow in steps of 256 positions so a long decode reallocates rarely
            self.setup_cache(bsz, -(-(start + seqlen) // 256) * 256)
        assert self.rope is not None
        mask = None
        if seqlen > 1:
            pos = torch.arange(start + seqlen, device=self.device)
            mask = pos[None, :] <= pos[start:, None]
        return Step(self.rope[start:start + seqlen], start=start, mask=mask)

    def _rows_step(self, rows: torch.Tensor, starts: torch.Tensor, seqlen: int) -> Step:
        """Row i at positions starts[i].., in cache row rows[i] (grown as needed)."""
        positions = starts.to(self.device)[:, None] + torch.arange(seqlen, device=self.device)
        end = int(positions.max()) + 1
        bsz = rows.shape[0]
        if self.rope is None or int(rows.max()) >= self.cache_batch or end > self.cache_len:
            self.setup_cache(int(rows.max()) + 1, -(-end // 256) * 256)
        assert self.rope is not None
        rows = rows.to(self.device)
        packed = bool(torch.equal(rows, torch.arange(bsz, device=self.device)))
        span = torch.arange(end, device=self.device)
        if bsz == 1:  # one row: the very masks of the int path (the same numbers as generate())
            mask = None if seqlen == 1 else span[None, :] <= positions[0, :, None]
        else:
            mask = (span[None, None, :] <= positions[:, :, None])[:, None]
        return Step(self.rope[positions], positions=positions, mask=mask, rows=rows, packed=packed,
                    length=end)

    def _static_step(self, start: torch.Tensor, seqlen: int) -> Step:
        if self.rope is None:
            raise RuntimeError("tensor positions need a KV cache set up first: call setup_cache")
        positions = start.to(self.device) + torch.arange(seqlen, device=self.device)
        table = self.rope.index_select(0, positions)
        mask = torch.arange(self.cache_len, device=self.device)[None, :] <= positions[:, None]
        return Step(table, positions=positions, mask=mask)


# --- building: meta device → transforms → weights --------------------------------------------

Transform = Callable[[Transformer], object]


def build_meta(args: ModelArgs, rope_layout: str = "interleaved") -> Transformer:
    """The model's modules on the meta device: no memory, no init. Transform it, then assign."""
    paused = gc.isenabled()
    gc.disable()  # hundreds of small objects: a cyclic-GC pass here costs ~0.1 s for nothing
    try:
        with torch.device("meta"):
            return Transformer(args, rope_layout)
    finally:
        if paused:
            gc.enable()


def assign_weights(model: Transformer, state_dict: Mapping[str, torch.Tensor], *,
                   dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                   trainable: bool = False) -> Transformer:
    """Assign checkpoint tensors to ``model`` (strict: missing or unexpected keys raise).

    Tensors already in ``dtype`` on ``device`` (e.g. memory-mapped from the checkpoint) are used
    in place, without a copy; others are converted once. Modules swapped in by a transform
    receive the tensors under the same names (they may convert them in ``_load_from_state_dict``).
    Parameters are frozen unless ``trainable``; the model is left in eval mode.
    """
    state = dict(state_dict)
    if model.args.tie_embeddings and "output.weight" not in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    if dtype is not None or device is not None:
        state = {k: v.to(device=device or v.device, dtype=dtype or v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(trainable)
    return model.eval()


def build_model(args: ModelArgs, state_dict: Mapping[str, torch.Tensor],
                dtype: torch.dtype | None = None, *, rope_layout: str = "interleaved",
                device: torch.device | str | None = None,
                transforms: tuple[Transform, ...] = ()) -> Transformer:
    """``build_meta`` → each of ``transforms`` → ``assign_weights``."""
    model = build_meta(args, rope_layout)
    for transform in transforms:
        transform(model)
    return assign_weights(model, state_dict, dtype=dtype, device=device)
