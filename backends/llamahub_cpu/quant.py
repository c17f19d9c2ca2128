"""Weight-only int8 and int4 for the CPU backend: the formats, and the linear layer that runs them.

Both schemes quantize a weight [N, K] in blocks of ``BLOCK`` = 32 along K (its input dimension),
each block with one float16 scale; K is padded with zeros to a whole block.

- ``int8``: symmetric, q = round(w / s) in [-127, 127] with s = max|w| / 127 (1.06 bytes/weight).
- ``int4``: symmetric, q in [-8, 7]; the scale is the one of a few candidates (the block's peak
  over 7 to 8.5 steps, either sign, then a least-squares refit) with the least squared error of
  the block (0.56 bytes/weight). Stored two per byte: in each block, byte j holds element
  j (low nibble) and j + 16 (high nibble), as value + 8.

Blocks of 32 rather than per channel or groups of 64: measured on a normal 2048x2048 matrix,
per-channel int8 has 1.55x the round-trip error of blocks of 32 (0.0083 vs 0.0053 relative), and
int4 in groups of 64 1.10x that of 32 (q4_0's rule), for 6% less memory traffic. The int4 scale
search brings its error 6% below q4_0's rule (0.081 vs 0.086).

The embedding stays bfloat16 (one row read per token: no speed to gain, and exact to bfloat16),
the output head is int8 in both schemes (it decides every token: int4 there costs most of int4's
accuracy), norms stay float32, and activations and the KV cache float32.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 32
SCHEMES = ("int8", "int4")
BITS = {"int8": 8, "int4": 4}
MAX_KERNEL_ROWS = 8  # qgemv's largest batch; beyond it the GEMM path (prefill)
_INT4_STEPS = (7.0, 7.5, 8.0, 8.5)  # candidate divisors of max|w| for the int4 scale
_CHUNK = 1 << 22  # weights quantized at a time


def padded_k(k: int) -> int:
    return -(-k // BLOCK) * BLOCK


def bytes_per_weight(scheme: str) -> float:
    """Memory per weight, scales included."""
    return BITS[scheme] / 8 + 2 / BLOCK


def _blocks(w: torch.Tensor) -> torch.Tensor:
    """w [N, K] as float32 blocks [N, Kp/32, 32] (zero padded)."""
    n, k = w.shape
    wf = w.float()
    if padded_k(k) != k:
        wf = F.pad(wf, (0, padded_k(k) - k))
    return wf.view(n, -1, BLOCK)


def quantize(w: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales) of w [N, K]: q int8 [N, Kp] or uint8 [N, Kp/2], scales float16 [N, Kp/32].

    Works through w a slice of rows at a time, so the float32 temporaries stay small.
    """
    if scheme not in BITS:
        raise ValueError(f"unknown scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    step = max(1, _CHUNK // max(1, w.shape[1]))
    if w.shape[0] <= step:
        return _quantize(w, scheme)
    parts = [_quantize(w[i:i + step], scheme) for i in range(0, w.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def quantize_with(ops: ModuleType | None, w: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize`` on the compiled kernel when there is one (same rules; int4 8x faster here)."""
    if ops is None:
        return quantize(w, scheme)
    step = max(1, _CHUNK // max(1, w.shape[1]))
    parts = [ops.quantize(w[i:i + step], BITS[scheme]) for i in range(0, w.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _quantize(w: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = _blocks(w)
    if scheme == "int8":
        scale = (blocks.abs().amax(-1, keepdim=True) / 127).half()
        q = _divide(blocks, scale).round().clamp_(-127, 127).to(torch.int8)
        return q.view(w.shape[0], -1), scale.squeeze(-1)
    scale = _int4_scales(blocks)
    q = (_divide(blocks, scale).round().clamp_(-8, 7) + 8).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(w.shape[0], -1), scale.squeeze(-1)


def _divide(blocks: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.float()
    return blocks / torch.where(s == 0, torch.ones_like(s), s)


def _int4_scales(blocks: torch.Tensor) -> torch.Tensor:
    """Per block, the candidate scale with the least squared round-trip error (float16).

    Candidates: the block's signed peak over each of ``_INT4_STEPS``, either sign; then the
    least-squares scale of the integers the best one rounds to, kept where it is better still.
    """
    peak = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))  # signed: the largest magnitude
    best, best_err = None, None
    for steps in _INT4_STEPS:
        for sign in (1.0, -1.0):
            best, best_err = _keep_better(blocks, (sign * peak / steps).half(), best, best_err)
    assert best is not None
    q = _divide(blocks, best).round().clamp_(-8, 7)
    refit = (q * blocks).sum(-1, keepdim=True) / q.pow(2).sum(-1, keepdim=True).clamp_min(1)
    return _keep_better(blocks, refit.half(), best, best_err)[0]


def _keep_better(blocks: torch.Tensor, scale: torch.Tensor, best: torch.Tensor | None,
                 best_err: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    q = _divide(blocks, scale).round_().clamp_(-8, 7)
    err = q.mul_(scale.float()).sub_(blocks).pow_(2).sum(-1, keepdim=True)
    if best is None or best_err is None:
        return scale, err
    better = err < best_err
    return torch.where(better, scale, best), torch.where(better, err, best_err)


def dequantize(q: torch.Tensor, scales: torch.Tensor, scheme: str, k: int | None = None) -> torch.Tensor:
    """float32 [N, K] (K = ``k``, else the padded width) from ``quantize``'s output."""
    n = q.shape[0]
    if scheme == "int8":
        values = q.view(n, -1, BLOCK).float()
    else:
        packed = q.view(n, -1, BLOCK // 2)
        values = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float() - 8
    w = (values * scales.float().unsqueeze(-1)).view(n, -1)
    return w if k is None else w[:, :k]


class QuantLinear(nn.Module):
    """A bias-free linear layer with weight-only int8/int4 weights (buffers ``q`` and ``scales``).

    Up to 8 rows run on ``ops.qgemv`` (decode, batched decode), more on ``ops.qgemm`` (prefill);
    without ``ops`` (no kernel on this machine) the weight is dequantized per call and aten runs it.
    Built on the meta device; the buffers are assigned from the quantized artifact.
    """

    def __init__(self, in_features: int, out_features: int, scheme: str, ops: ModuleType | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.bits, self._ops = scheme, BITS[scheme], ops
        kp = padded_k(in_features)
        width = kp if scheme == "int8" else kp // 2
        dtype = torch.int8 if scheme == "int8" else torch.uint8
        self.register_buffer("q", torch.empty(out_features, width, dtype=dtype))
        self.register_buffer("scales", torch.empty(out_features, kp // BLOCK, dtype=torch.float16))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        x2 = x.reshape(rows, self.in_features).float()
        if self._ops is None:
            y = F.linear(x2, dequantize(self.q, self.scales, self.scheme, self.in_features))
        elif rows <= MAX_KERNEL_ROWS:
            y = self._ops.qgemv_int(x2, self.q, self.scales, self.bits)
        else:
            y = self._ops.qgemm(x2, self.q, self.scales, self.bits)
        return y.view(*x.shape[:-1], self.out_features)


class QuantFeedForward(nn.Module):
    """The reference's SwiGLU feed-forward over three ``QuantLinear`` (same names: w1, w2, w3).

    1 to 8 rows run as one kernel call (``ops.qffn_int``: w1 and w3 share the rounded input and
    one pass over the threads, silu and the product happen there); more rows, or no kernel, as
    the reference does.
    """

    def __init__(self, w1: QuantLinear, w2: QuantLinear, w3: QuantLinear) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = w1, w2, w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, ops = x.shape[:-1].numel(), self.w1._ops
        if ops is None or rows > MAX_KERNEL_ROWS:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        y = ops.qffn_int(x.reshape(rows, -1).float(), self.w1.q, self.w1.scales, self.w3.q, self.w3.scales,
                         self.w2.q, self.w2.scales, self.w1.bits)
        return y.view(*x.shape[:-1], self.w2.out_features)


class WideEmbedding(nn.Embedding):
    """The bfloat16 embedding table, looked up into float32 activations."""

    def reset_parameters(self) -> None:
        """No init: weights come from the artifact."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens).float()


def head_scheme(scheme: str) -> str:
    """The output head's scheme for a model in ``scheme`` (int8 for both: see the module doc)."""
    return "int8"


def swap_quantized(model: nn.Module, scheme: str, ops: ModuleType | None) -> None:
    """On the meta model: every linear → ``QuantLinear`` (the head in ``head_scheme``), the
    embedding → ``WideEmbedding``. Its state dict then has the artifact's keys."""
    with torch.device("meta"):
        for parent_name, parent in list(model.named_modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    full = f"{parent_name}.{name}" if parent_name else name
                    s = head_scheme(scheme) if full == "output" else scheme
                    setattr(parent, name, QuantLinear(child.in_features, child.out_features, s, ops))
                elif isinstance(child, nn.Embedding):
                    setattr(parent, name, WideEmbedding(child.num_embeddings, child.embedding_dim))
        for layer in getattr(model, "layers", ()):  # the reference's blocks (state-dict names)
            ff = layer.feed_forward
            layer.feed_forward = QuantFeedForward(ff.w1, ff.w2, ff.w3)
