"""A transform of the reference blocks: one token's decode step through a block in one kernel call.

A decode step of the reference block is about sixty small torch ops (norms, projections, RoPE,
the cache update, attention, the gated feed-forward). On a small model their dispatch costs more
than reading the weights: on the ~110M bench model it was most of a token's time. ``FusedBlock``
keeps the block's modules, names and weights, and sends the one case that dominates decoding, one
token of one sequence through the KV cache, to ``decode_block`` (``csrc/block.h``), which runs the
same math on the same kernels (the fp32/bf16 GEMV or the int8/int4 integer dots) and rounds a bf16
model's values where the reference does. Everything else (prompts, batched serving steps, training,
linears another plugin swapped in) runs the reference block's ``forward``.

``LLAMAHUB_CPU_FUSED=0`` turns it off.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch
from torch import nn

from llamahub.plugin import Step, TransformerBlock
from llamahub_cpu.kernels import DecodeLinear
from llamahub_cpu.quant import QuantFeedForward, QuantLinear

ENV = "LLAMAHUB_CPU_FUSED"


class FusedBlock(TransformerBlock):
    """The reference block (same submodules, same state-dict names) with a one-call decode step."""

    def __init__(self, block: TransformerBlock, ops: ModuleType) -> None:
        nn.Module.__init__(self)
        self.attention, self.feed_forward = block.attention, block.feed_forward
        self.attention_norm, self.ffn_norm = block.attention_norm, block.ffn_norm
        self._ops = ops

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        where = self._token_at(x, step)
        weights = self._weights() if where is not None else None
        if where is None or weights is None:
            return super().forward(x, step)
        row, pos = where
        cache = self.attention.cache
        assert cache is not None
        return self._ops.decode_block(
            x, self.attention_norm.weight, self.ffn_norm.weight, self.attention_norm.eps, weights[0],
            weights[1], cache.k, cache.v, row, pos, step.table, self.attention.rope_layout == "interleaved")

    def _token_at(self, x: torch.Tensor, step: Step) -> tuple[int, int] | None:
        """(cache row, position) of a lone token decoding through the cache, else None."""
        cache = self.attention.cache
        if (x.shape[0] != 1 or x.shape[1] != 1 or not step.use_cache or step.mask is not None
                or cache is None or cache.k.dtype != torch.float32
                or (x.requires_grad and torch.is_grad_enabled())):
            return None
        if step.rows is None and step.positions is None:
            return 0, step.start
        if step.rows is not None and step.positions is not None and step.rows.numel() == 1:
            return int(step.rows[0]), int(step.positions[0, 0])
        return None

    def _weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The seven linears' tensors (and scales), when they are still the kernel's own layers."""
        a, f = self.attention, self.feed_forward
        linears = (a.wq, a.wk, a.wv, a.wo, f.w1, f.w3, f.w2)
        if all(type(lin) is DecodeLinear for lin in linears):
            weights = [lin.weight for lin in linears]
            return (weights, []) if all(w.is_contiguous() for w in weights) else None
        if type(f) is QuantFeedForward and all(type(lin) is QuantLinear for lin in linears):
            return [lin.q for lin in linears], [lin.scales for lin in linears]
        return None


def fuse_blocks(model: nn.Module, ops: ModuleType | None) -> bool:
    """Swap each of ``model.layers`` for a ``FusedBlock`` (on the meta model, before the weights
    are assigned); False when there is no kernel or ``LLAMAHUB_CPU_FUSED=0``."""
    if ops is None or not hasattr(ops, "decode_block") or os.environ.get(ENV, "1") == "0":
        return False
    layers = getattr(model, "layers", None)
    if layers is None:
        return False
    for i, layer in enumerate(layers):
        if type(layer) is TransformerBlock:
            layers[i] = FusedBlock(layer, ops)
    return True
