"""Weights quantized ahead of time and shipped in a checkpoint's folder (what QAT writes): the cpu
backend offers its scheme as a quantizer, maps a shipped file as it is, and refuses a bad one
without touching it."""

from __future__ import annotations

import shutil
from pathlib import Path

import llamahub_cpu
import pytest
import torch
from llamahub_cpu.artifact import artifact_key, shipped_path
from llamahub_cpu.kernels import qkernel
from llamahub_cpu.prequant import CpuQuantizer
from llamahub_cpu.quant import QuantLinear, quantize, quantize_with
from safetensors.torch import save_file

import llamahub
from llamahub.errors import CorruptCheckpointError
from llamahub.model.checkpoint import open_checkpoint


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    shutil.copyfile(folder.parent / "tokenizer.model", out / "tokenizer.model")
    return out


def _absmax_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 in the backend's layout but with another scale rule (max|w| / 7): integers the
    backend would not make itself, so a load that quantized again would not give them back."""
    blocks = w.float().view(w.shape[0], -1, 32)
    scales = (blocks.abs().amax(-1, keepdim=True) / 7).half()
    q = (blocks / scales.float()).round().clamp(-8, 7).to(torch.int8) + 8
    q = q.to(torch.uint8)
    return (q[..., :16] | (q[..., 16:] << 4)).reshape(w.shape[0], -1), scales.squeeze(-1)


def _ship(folder: Path, scheme: str = "int4") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    quantizer = CpuQuantizer(scheme)
    state = open_checkpoint(folder).state_dict()
    packed = {k: (_absmax_int4(v) if quantizer.kind(k) == "int4" else quantize(v, quantizer.kind(k)))
              for k, v in state.items() if quantizer.kind(k, v.dim()) in ("int8", "int4")}
    assert quantizer.save(folder, state, packed) == [f"quantized/{artifact_key(scheme)}.safetensors"]
    return packed


def test_the_backend_offers_its_scheme() -> None:
    backend = llamahub_cpu.CpuBackend()
    q4, q8 = backend.quantizer("int4"), backend.quantizer("int8")
    assert backend.quantizer("bf16") is None and backend.quantizer("fp32") is None
    assert (q4.kind("layers.3.feed_forward.w2.weight"), q4.kind("output.weight")) == ("int4", "int8")
    assert (q8.kind("tok_embeddings.weight"), q8.kind("norm.weight", 1)) == ("bf16", "fp32")
    w = torch.randn(40, 70)
    ops = qkernel()  # the compiled quantizer when there is one, as the backend's own loads use
    made = quantize_with(None if isinstance(ops, str) else ops, w, "int4")
    assert all(torch.equal(a, b) for a, b in zip(q4.quantize(w, "int4"), made, strict=True))


def test_shipped_weights_are_mapped_as_they_are(llama2_debug_folder: Path, tmp_path: Path) -> None:
    folder = _copy(llama2_debug_folder, tmp_path)
    packed = _ship(folder)
    m = llamahub.load(folder, dtype="int4")
    assert m.info["quantized"] == {"built": False, "shipped": True,
                                   "path": str(shipped_path(folder, "int4"))}
    seen = 0
    for name, module in m.decoder.named_modules():
        if isinstance(module, QuantLinear):
            q, s = packed[f"{name}.weight"]
            assert torch.equal(module.q, q) and torch.equal(module.scales, s), name
            seen += 1
    assert seen == len(packed) == 2 * 7 + 1
    own, _ = quantize(open_checkpoint(folder).state_dict()["layers.0.attention.wq.weight"], "int4")
    assert not torch.equal(own, packed["layers.0.attention.wq.weight"][0])  # the backend's would differ
    assert m.generate("hello", max_new_tokens=4, temperature=0)
    m.close()
    with llamahub.load(folder, dtype="int8") as m8:  # no int8 file shipped: quantized as usual
        assert m8.info["quantized"]["built"] is True and "shipped" not in m8.info["quantized"]


def _rewrite_scheme(path: Path) -> None:
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(path), metadata={"scheme": "int8", "format": "1"})


def _drop_a_tensor(path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors.pop("layers.1.attention.wk.q")
    save_file(tensors, str(path), metadata={"scheme": "int4", "format": "1"})


@pytest.mark.parametrize(("damage", "match"), [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable"),
    (_rewrite_scheme, "holds int8 weights in format 1, not int4"),
    (_drop_a_tensor, "do not fit this model"),
])
def test_a_bad_shipped_file_is_refused_and_left_alone(damage, match: str, llama2_debug_folder: Path,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    folder = _copy(llama2_debug_folder, tmp_path)
    _ship(folder)
    path = shipped_path(folder, "int4")
    damage(path)
    before = path.read_bytes()
    with pytest.raises(CorruptCheckpointError, match=match) as e:
        llamahub.load(folder, dtype="int4")
    assert "fine-tune again" in (e.value.hint or "")
    assert path.read_bytes() == before  # what a fine-tune trained is never rebuilt over


def test_save_refuses_what_is_not_the_backends_layout(tmp_path: Path) -> None:
    quantizer = CpuQuantizer("int4")
    w = torch.randn(8, 64)
    state = {"layers.0.attention.wq.weight": w, "norm.weight": torch.ones(64)}
    with pytest.raises(ValueError, match="give its integers and scales"):
        quantizer.save(tmp_path, state, {})
    q, s = quantize(w, "int8")  # int8 integers where the layer is int4
    with pytest.raises(ValueError, match="not the cpu backend's int4 layout"):
        quantizer.save(tmp_path, state, {"layers.0.attention.wq.weight": (q, s)})
    q, s = quantize(w, "int4")
    quantizer.save(tmp_path, state, {"layers.0.attention.wq.weight": (q, s)})
    from safetensors.torch import load_file

    written = load_file(str(shipped_path(tmp_path, "int4")))
    assert torch.equal(written["layers.0.attention.wq.q"], q)
    assert torch.equal(written["layers.0.attention.wq.scales"], s)
    assert written["norm.weight"].dtype == torch.float32
