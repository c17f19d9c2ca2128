"""The in-tree CPU backend: dtypes, threads, and its refusals."""

from __future__ import annotations

from pathlib import Path

import llamahub_cpu
import pytest
import torch
from llamahub_cpu.engine import build_decoder

from llamahub.errors import NoBackendError
from llamahub.interfaces import LoadOptions
from llamahub.model.checkpoint import open_checkpoint
from llamahub.registry import _builtin


def test_bf16_close_to_fp32(llama3_debug_folder: Path) -> None:
    ckpt = open_checkpoint(llama3_debug_folder)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    fp32 = build_decoder(ckpt, "fp32")(tokens, 0)
    bf16_model = build_decoder(ckpt, "bf16")
    assert bf16_model.output.weight.dtype == torch.bfloat16
    bf16 = bf16_model(tokens, 0)
    assert bf16.dtype == torch.float32  # logits are always float32
    assert (bf16 - fp32).abs().max().item() < 0.05 * fp32.abs().max().item() + 0.05


def test_weights_are_not_copied_when_dtype_matches(llama3_debug_folder: Path) -> None:
    ckpt = open_checkpoint(llama3_debug_folder)
    state = ckpt.state_dict()
    from llamahub.model.transformer import build_model

    model = build_model(ckpt.args, state, torch.float32)
    w = state["layers.0.feed_forward.w2.weight"]
    assert model.layers[0].feed_forward.w2.weight.data_ptr() == w.data_ptr()


def test_threads_option_is_honoured(llama2_debug_folder: Path) -> None:
    import llamahub

    before = torch.get_num_threads()
    try:
        m = llamahub.load(llama2_debug_folder, threads=1)
        assert torch.get_num_threads() == 1 and m.info["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_refuses_other_devices_and_dtypes() -> None:
    b = llamahub_cpu.CpuBackend()
    v = _builtin().resolve("llama-debug-2")
    assert b.unavailable_reason() is None
    assert "cuda" in (b.unsupported_reason(v, LoadOptions(device="cuda")) or "")
    assert "int4" in (b.unsupported_reason(v, LoadOptions(dtype="int4")) or "")
    assert b.memory_estimate(v, LoadOptions(dtype="fp32")) > b.memory_estimate(v, LoadOptions(dtype="bf16"))


def test_load_with_unsupported_dtype_names_the_reason(llama2_debug_folder: Path) -> None:
    import llamahub

    with pytest.raises(NoBackendError, match="int4"):
        llamahub.load(llama2_debug_folder, dtype="int4")


def test_decode_kernel_matches_reference_exactly_enough(llama3_debug_folder: Path) -> None:
    """The AVX2 kernel (when it compiles here) gives the reference logits and generations."""
    from llamahub_cpu.kernels import DecodeLinear, kernel

    if isinstance(kernel(), str):
        pytest.skip(f"decode kernel unavailable: {kernel()}")
    ckpt = open_checkpoint(llama3_debug_folder)
    fast = build_decoder(ckpt, "fp32")
    ref = build_decoder(ckpt, "fp32", kernel=False)
    assert fast.kernel.startswith("llamahub") and ref.kernel == "aten"
    assert isinstance(fast.layers[0].attention.wq, DecodeLinear)
    from llamahub_cpu.kernels import use_decode_kernel

    from llamahub.model.transformer import build_model

    model = build_model(ckpt.args, ckpt.state_dict(), torch.float32)
    before = model.layers[0].feed_forward.w2.weight.data_ptr()
    use_decode_kernel(model)
    assert model.layers[0].feed_forward.w2.weight.data_ptr() == before  # swapped, not copied
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    assert (fast(tokens, 0) - ref(tokens, 0)).abs().max().item() < 1e-4  # prefill: aten path
    for i in range(5, 30):  # decode: one token at a time through the kernel
        step = torch.tensor([[i]])
        assert (fast(step, i) - ref(step, i)).abs().max().item() < 1e-4
    bf = build_decoder(ckpt, "bf16")
    bf_ref = build_decoder(ckpt, "bf16", kernel=False)
    step = torch.tensor([[3]])
    assert (bf(step, 0) - bf_ref(step, 0)).abs().max().item() < 0.05


def test_the_kernel_is_built_once_per_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the README says: the build lives in the user's cache dir (not LLAMAHUB_HOME), keyed by
    torch version and source, so a fresh HOME compiles again and a fresh LLAMAHUB_HOME does not."""
    import platformdirs
    import torch
    from llamahub_cpu.kernels import _build_dir

    monkeypatch.setenv("LLAMAHUB_HOME", str(tmp_path / "home-a"))
    first = _build_dir()
    monkeypatch.setenv("LLAMAHUB_HOME", str(tmp_path / "home-b"))
    assert _build_dir() == first
    assert first.parent == Path(platformdirs.user_cache_dir("llamahub")) / "kernels"
    assert first.name.startswith(f"torch-{torch.__version__}-")
    monkeypatch.setenv("HOME", str(tmp_path / "fresh-home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert _build_dir() != first and str(tmp_path / "fresh-home") in str(_build_dir())
