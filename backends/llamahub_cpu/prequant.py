"""The cpu backend's int8/int4 scheme offered to a trainer, and the file it ships for this backend.

``CpuBackend.quantizer(dtype)`` returns a ``CpuQuantizer``: a trainer that fake-quantizes with it
(the fine-tuning plugin's QAT) trains exactly the model this backend runs in that dtype, and
``save`` writes the integers and scales it trained into the checkpoint's folder in the layout of
the backend's own derived artifact (``artifact.shipped_path``). Loading that checkpoint with the
dtype then maps the file as it is: no second quantization (``artifact.quantized_weights``).

What a trainer needs to know, per tensor of the reference model (``kind``):
- "int8" / "int4": ``quantize(w, kind)`` gives ``(q, scales)`` as stored (``llamahub_cpu.quant``:
  blocks of 32 input columns, one float16 scale each, the scale by the scheme's own rule from
  ``w``); ``dequantize(q, scales, kind, k)`` the float32 weight the backend computes with;
- "bf16": the backend keeps it in bfloat16 (the embedding);
- "fp32": kept as it is (norms).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from llamahub_cpu.artifact import FORMAT, shipped_path, tensor_kind
from llamahub_cpu.quant import BITS, SCHEMES, dequantize, padded_k, quantize_with


class CpuQuantizer:
    """The cpu backend's ``scheme`` ("int8" or "int4"), for training and for shipping weights."""

    backend = "cpu"

    def __init__(self, scheme: str) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
        self.scheme = scheme

    def __repr__(self) -> str:
        return f"CpuQuantizer({self.scheme!r})"

    def kind(self, key: str, ndim: int = 2) -> str:
        """"int8", "int4", "bf16" or "fp32": how the backend stores the tensor ``key``."""
        return tensor_kind(key, ndim, self.scheme)

    def quantize(self, w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, scales)`` of the weight ``w`` [out, in], exactly as the backend stores them: on
        its compiled quantizer for a CPU tensor when it has one (int4 8x faster, the same
        rules), else in torch (any device)."""
        from llamahub_cpu.kernels import qkernel

        with torch.no_grad():
            ops = qkernel() if w.device.type == "cpu" else None
            return quantize_with(None if isinstance(ops, str) else ops, w.detach(), kind)

    def dequantize(self, q: torch.Tensor, scales: torch.Tensor, kind: str, k: int) -> torch.Tensor:
        """The float32 weight [out, k] the backend computes with."""
        return dequantize(q, scales, kind, k)

    def save(self, folder: Path, state: Mapping[str, torch.Tensor],
             quantized: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
        """Write the backend's file into ``folder`` (a checkpoint's folder): the ``(q, scales)``
        of every quantized weight as given in ``quantized`` (keyed like ``state``), every other
        tensor of ``state`` as the backend keeps it. Returns its path relative to ``folder``."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for key in dict.fromkeys([*state, *quantized]):
            t = state.get(key)
            kind = self.kind(key, 2 if t is None else t.dim())
            if kind in BITS:
                if key not in quantized:
                    raise ValueError(f"{key} is {kind} on the cpu backend: give its integers and scales")
                name = key.removesuffix(".weight")
                q, s = (x.detach().cpu().contiguous() for x in quantized[key])
                _check(key, q, s, kind, None if t is None else t.shape)
                tensors[f"{name}.q"], tensors[f"{name}.scales"] = q, s
            elif t is not None:
                dtype = torch.bfloat16 if kind == "bf16" else torch.float32
                tensors[key] = t.detach().cpu().to(dtype).contiguous()
        path = shipped_path(folder, self.scheme)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"scheme": self.scheme, "format": str(FORMAT),
                                                "made_by": "a trainer (shipped with the checkpoint)"})
        return [str(path.relative_to(folder))]


def _check(key: str, q: torch.Tensor, s: torch.Tensor, kind: str, shape: torch.Size | None) -> None:
    """Refuse integers and scales that are not in the backend's layout for ``kind``."""
    dtype = torch.int8 if kind == "int8" else torch.uint8
    rows = q.shape[0] if shape is None else shape[0]
    kp = s.shape[1] * 32 if shape is None else padded_k(shape[1])
    width = kp if kind == "int8" else kp // 2
    if q.dtype != dtype or s.dtype != torch.float16 or tuple(q.shape) != (rows, width) or \
            tuple(s.shape) != (rows, kp // 32):
        raise ValueError(f"{key}: q {q.dtype} {tuple(q.shape)}, scales {s.dtype} {tuple(s.shape)} "
                         f"are not the cpu backend's {kind} layout")
