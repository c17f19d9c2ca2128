"""Quantization-aware training: projections see their weights rounded to int8/int4 while training.

The scheme is symmetric and group-wise: each row of a weight is cut into groups of ``group_size``
input columns (``0``: the whole row), each group gets a scale ``max|w| / qmax`` (qmax 127 for
int8, 7 for int4) and its values round to integers in [-qmax - 1, qmax]. In training the
forward uses the rounded weight and the gradient passes straight through the rounding
(``w + (q(w) - w).detach()``), so the float weights learn to sit where rounding hurts least.

Export: the derivative's checkpoint holds the dequantized weights (any backend loads them and
computes what the quantized model computes), and ``quantized/`` holds the integers and scales
(``weights.safetensors``: ``<name>.qweight`` int8 [out, in], ``<name>.scales`` float32
[out, in / group_size]; ``quant_config.json`` says bits, group size and scheme) for a quantized
backend to map as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import llamahub.plugin as lp

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "quant_config.json"


def quantize(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers as int8 [out, in], scales float32 [out, groups]) of ``w`` [out, in]."""
    out, inp = w.shape
    group = group_size or inp
    if inp % group:
        raise lp.ConfigError(f"group_size {group} does not divide the input width {inp}",
                             hint="choose a group size that divides every projection's width (e.g. 32)")
    qmax = 2 ** (bits - 1) - 1
    groups = w.detach().float().reshape(out, inp // group, group)
    scales = groups.abs().amax(-1).clamp(min=1e-8) / qmax
    q = torch.clamp(torch.round(groups / scales[..., None]), -qmax - 1, qmax)
    return q.reshape(out, inp).to(torch.int8), scales


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out, inp = q.shape
    groups = scales.shape[1]
    return (q.float().reshape(out, groups, inp // groups) * scales[..., None]).reshape(out, inp)


def fake_quant(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``w`` rounded to the grid in the forward, the identity in the backward."""
    q, scales = quantize(w, bits, group_size)
    return w + (dequantize(q, scales).to(w.dtype) - w).detach()


class FakeQuantLinear(nn.Linear):
    """A projection whose forward uses its weight rounded to ``bits`` (the weight keeps its name)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.bits, self.group_size = bits, group_size

    def reset_parameters(self) -> None:
        """No init: the weight comes from the checkpoint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quant(self.weight, self.bits, self.group_size))


def add_fake_quant(model: lp.Transformer, targets: tuple[str, ...], bits: int, group_size: int) -> list[str]:
    names = []
    for i, block in enumerate(model.layers):
        for parent_name, parent in (("attention", block.attention), ("feed_forward", block.feed_forward)):
            for proj in targets:
                old = getattr(parent, proj, None)
                if old is None:
                    continue
                with torch.device("meta"):
                    new = FakeQuantLinear(old.in_features, old.out_features, bits, group_size)
                setattr(parent, proj, new)
                names.append(f"layers.{i}.{parent_name}.{proj}")
    return names


def quantized_state(model: nn.Module, full: Mapping[str, torch.Tensor] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the full state with every fake-quantized weight replaced by its dequantized value,
    the integers and scales of those weights). ``full``: the model's full weights when its own
    state dict is sharded (FSDP)."""
    owners = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)}
    state, packed = {}, {}
    for key, value in (full if full is not None else model.state_dict()).items():
        module = owners.get(key)
        if module is None:
            state[key] = value.detach().clone()
            continue
        q, scales = quantize(value, module.bits, module.group_size)
        state[key] = dequantize(q, scales).to(value.dtype)
        name = key.removesuffix(".weight")
        packed[f"{name}.qweight"], packed[f"{name}.scales"] = q.contiguous(), scales.contiguous()
    return state, packed


def save_quantized(folder: Path, packed: Mapping[str, torch.Tensor], bits: int, group_size: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(packed), str(folder / WEIGHTS_FILE),
              metadata={"bits": str(bits), "group_size": str(group_size), "scheme": "symmetric"})
    config = {"bits": bits, "group_size": group_size, "scheme": "symmetric",
              "layout": "qweight int8 [out, in]; scales float32 [out, in / group_size]; w = q * scale"}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return [CONFIG_FILE, WEIGHTS_FILE]


def post_training(state: Mapping[str, torch.Tensor], targets: tuple[str, ...], bits: int,
                  group_size: int) -> dict[str, torch.Tensor]:
    """Round the ``targets`` projections of a state dict after training (the baseline QAT beats)."""
    out = {}
    for key, value in state.items():
        proj = key.removesuffix(".weight").rsplit(".", 1)[-1]
        if key.startswith("layers.") and proj in targets and value.dim() == 2:
            out[key] = dequantize(*quantize(value, bits, group_size)).to(value.dtype)
        else:
            out[key] = value
    return out
