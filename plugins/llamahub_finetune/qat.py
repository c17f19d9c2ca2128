"""Quantization-aware training for the int8/int4 scheme of the backend that will run the result.

A backend that runs pre-quantized weights offers ``quantizer(dtype)`` (the cpu backend does:
blocks of 32 input columns, one float16 scale each, int8 symmetric or int4 in -8..7 with its
least-error scale; ``llamahub_cpu.prequant``). QAT asks the installed backends for one
(``find_quantizer``) and trains the very model that backend will run:

- the block projections in ``targets`` and the output head compute with their weight quantized
  and dequantized by the backend's own functions, the scale recomputed from the current weight
  by the backend's rule at every step (nothing about the grid is learned, so the export needs
  no rule of its own); the embedding computes rounded to what the backend keeps (bfloat16);
- the gradient passes straight through the rounding (``w + (w_hat - w).detach()``), so the float
  weights learn to sit where rounding hurts least.

Export (``export``): the ``(q, scales)`` of the final weights, made by the function the forward
uses, go to the backend's ``save`` (its own file in the derivative's ``quantized/``), so a load
in that dtype maps exactly the integers trained, with no second quantization; the checkpoint
holds the same weights dequantized, so any backend or dtype computes the quantized model's
function. Projections left out of ``targets`` train in float and are quantized once at export.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import llamahub.plugin as lp

INTEGER = ("int8", "int4")  # the kinds a quantizer quantizes; "bf16" is rounded, "fp32" kept


def find_quantizer(bits: int, backend: str | None) -> tuple[str, Any]:
    """(backend name, its quantizer for int``bits``): ``backend``'s, else the first installed
    backend by priority that offers one."""
    dtype = f"int{bits}"
    installed = lp.installed_backends()
    if backend is not None and backend not in installed:
        raise lp.ConfigError(f"no installed backend {backend!r}",
                             hint=f"installed: {', '.join(sorted(installed)) or 'none'}")
    names = [backend] if backend else sorted(installed, key=lambda n: -getattr(installed[n], "priority", 0))
    for name in names:
        make = getattr(installed[name], "quantizer", None)
        quantizer = make(dtype) if callable(make) else None
        if quantizer is not None:
            return name, quantizer
    where = f"the {backend} backend runs" if backend else "no installed backend runs"
    raise lp.ConfigError(f"{where} no pre-quantized {dtype} weights, so QAT has no scheme to train for",
                         hint="install llamahub's cpu backend (it offers int8 and int4), or name a "
                              "backend with a quantizer (backend=...)")


def fake_quant(w: torch.Tensor, quantizer: Any, kind: str) -> torch.Tensor:
    """``w`` as the backend computes with it in the forward; the identity in the backward."""
    if kind == "bf16":
        return w + (w.detach().to(torch.bfloat16).to(w.dtype) - w).detach()
    q, scales = quantizer.quantize(w.detach(), kind)
    return w + (quantizer.dequantize(q, scales, kind, w.shape[1]).to(w.dtype) - w).detach()


class FakeQuantLinear(nn.Linear):
    """A projection whose forward uses its weight as the backend stores it (the weight keeps its name)."""

    def __init__(self, in_features: int, out_features: int, quantizer: Any, kind: str) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.quantizer, self.kind = quantizer, kind

    def reset_parameters(self) -> None:
        """No init: the weight comes from the checkpoint."""

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quant(self.weight, self.quantizer, self.kind))


class FakeQuantEmbedding(nn.Embedding):
    """The embedding looked up in the precision the backend keeps it in (bfloat16)."""

    def reset_parameters(self) -> None:
        """No init: the weight comes from the checkpoint."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, fake_quant(self.weight, None, "bf16"))


def add_fake_quant(model: lp.Transformer, targets: tuple[str, ...], quantizer: Any) -> list[str]:
    """On the meta model: the ``targets`` projections and the head → ``FakeQuantLinear``, the
    embedding → ``FakeQuantEmbedding``, as far as the backend stores them below float32."""
    names = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            kind = quantizer.kind(f"{full}.weight", 2)
            if isinstance(child, nn.Linear) and kind in INTEGER and (name in targets or full == "output"):
                with torch.device("meta"):
                    new: nn.Module = FakeQuantLinear(child.in_features, child.out_features, quantizer, kind)
            elif isinstance(child, nn.Embedding) and kind == "bf16":
                with torch.device("meta"):
                    new = FakeQuantEmbedding(child.num_embeddings, child.embedding_dim)
            else:
                continue
            setattr(parent, name, new)
            names.append(full)
    return names


def export(full: Mapping[str, torch.Tensor], quantizer: Any
           ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(the checkpoint: every weight as the backend computes with it, in its own dtype;
    the ``(q, scales)`` of every quantized weight, for ``quantizer.save``) from the final weights
    ``full`` (the model's state dict; FSDP's gathered one)."""
    state, packed = {}, {}
    for key, value in full.items():
        value = value.detach()
        kind = quantizer.kind(key, value.dim())
        if kind in INTEGER:
            q, scales = quantizer.quantize(value, kind)
            packed[key] = (q, scales)
            state[key] = quantizer.dequantize(q, scales, kind, value.shape[1]).to(value.dtype)
        elif kind == "bf16":
            state[key] = value.to(torch.bfloat16).to(value.dtype)
        else:
            state[key] = value.clone()
    return state, packed
