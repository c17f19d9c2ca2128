"""The in-tree CPU backend: dtypes, threads, plans, and its refusals."""

from __future__ import annotations

from pathlib import Path

import llamahub_cpu
import pytest
import torch
from llamahub_cpu.engine import build_decoder

from llamahub.errors import NoBackendError
from llamahub.interfaces import LoadOptions
from llamahub.reference import Reference, folder_artifacts, open_reference
from llamahub.registry import shipped


def _ref(folder: Path, tmp_path: Path) -> Reference:
    return open_reference(folder_artifacts(folder, tmp_path), shipped().resolve(folder.name))


def test_bf16_close_to_fp32(llama3_debug_folder: Path, tmp_path: Path) -> None:
    ref = _ref(llama3_debug_folder, tmp_path)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.inference_mode():
        fp32 = build_decoder(ref.reader, "fp32")(tokens, 0)
        bf16_model = build_decoder(ref.reader, "bf16")
        assert bf16_model.output.weight.dtype == torch.bfloat16
        bf16 = bf16_model(tokens, 0)
    assert bf16.dtype == torch.float32  # logits are always float32
    assert (bf16 - fp32).abs().max().item() < 0.05 * fp32.abs().max().item() + 0.05


def test_weights_are_not_copied_when_dtype_matches(llama3_debug_folder: Path, tmp_path: Path) -> None:
    ref = _ref(llama3_debug_folder, tmp_path)
    model = build_decoder(ref.reader, "fp32")
    w = ref.reader.state_dict()["layers.0.feed_forward.w2.weight"]
    assert model.layers[0].feed_forward.w2.weight.data_ptr() == w.data_ptr()


def test_threads_apply_while_the_model_generates_only(llama2_debug_folder: Path) -> None:
    import llamahub

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    m = llamahub.load(llama2_debug_folder, threads=wanted)
    seen: list[int] = []
    m.decoder.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    assert torch.get_num_threads() == before and m.info["threads"] == wanted
    m.generate("hello", max_new_tokens=3, temperature=0)
    assert seen and set(seen) == {wanted}
    assert m.decoder.layers[0].attention.cache.k.dtype == torch.float32  # even for bf16 weights
    assert torch.get_num_threads() == before  # the process's setting is back


def test_refuses_other_devices_and_dtypes() -> None:
    b = llamahub_cpu.CpuBackend()
    v = shipped().resolve("llama-debug-2")
    assert b.unavailable_reason() is None
    assert "cuda" in (b.unsupported_reason(v, LoadOptions(device="cuda")) or "")
    assert "int2" in (b.unsupported_reason(v, LoadOptions(dtype="int2")) or "")
    assert "tp" in (b.unsupported_reason(v, LoadOptions(extra={"tp": 2})) or "")


def test_plan_counts_weights_and_a_full_context_cache() -> None:
    b = llamahub_cpu.CpuBackend()
    v = shipped().resolve("llama-2-7b")
    fp32, bf16 = b.plan(v, LoadOptions(dtype="fp32")), b.plan(v, LoadOptions())
    assert bf16.dtype == "bf16" and fp32.host_bytes > bf16.host_bytes
    kv_full = 2 * 32 * 32 * 128 * 4096 * 4  # layers x kv heads x head_dim x 4096 positions, float32
    assert bf16.host_bytes - v.param_count() * 2 - llamahub_cpu.WORKING_BYTES == kv_full
    short = b.plan(v, LoadOptions(context_length=1024))
    assert bf16.host_bytes - short.host_bytes == kv_full * 3 // 4


def test_load_with_unsupported_dtype_names_the_reason(llama2_debug_folder: Path) -> None:
    import llamahub

    with pytest.raises(NoBackendError, match="int2"):
        llamahub.load(llama2_debug_folder, dtype="int2")


def test_decode_kernel_matches_reference_exactly_enough(llama3_debug_folder: Path, tmp_path: Path) -> None:
    """The AVX2 kernel (when it compiles here) gives the reference logits and generations."""
    from llamahub_cpu.kernels import DecodeLinear, kernel

    if isinstance(kernel(), str):
        pytest.skip(f"decode kernel unavailable: {kernel()}")
    ref = _ref(llama3_debug_folder, tmp_path)
    fast = build_decoder(ref.reader, "fp32")
    slow = build_decoder(ref.reader, "fp32", kernel=False)
    assert fast.kernel.startswith("llamahub") and slow.kernel == "aten"
    assert isinstance(fast.layers[0].attention.wq, DecodeLinear)  # swapped on meta, then assigned
    w2 = ref.reader.state_dict()["layers.0.feed_forward.w2.weight"]
    assert fast.layers[0].feed_forward.w2.weight.data_ptr() == w2.data_ptr()  # not copied
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        assert (fast(tokens, 0) - slow(tokens, 0)).abs().max().item() < 1e-4  # prefill: aten path
        for i in range(5, 30):  # decode: one token at a time through the kernel
            step = torch.tensor([[i]])
            assert (fast(step, i) - slow(step, i)).abs().max().item() < 1e-4
        bf = build_decoder(ref.reader, "bf16")
        bf_slow = build_decoder(ref.reader, "bf16", kernel=False)
        step = torch.tensor([[3]])
        assert (bf(step, 0) - bf_slow(step, 0)).abs().max().item() < 0.05



def test_decode_kernel_takes_up_to_8_rows_each_exactly_as_alone() -> None:
    """A batched decode step (the server's) reads each weight once for all its rows, and every
    row's sum is the very sum of that row alone; 9 rows and more (prompts) go to aten."""
    from llamahub_cpu.kernels import DecodeLinear, kernel

    gemv = kernel()
    if isinstance(gemv, str):
        pytest.skip(f"decode kernel unavailable: {gemv}")
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(70, 100, generator=gen).to(dtype)  # 100 columns: blocks of 32 and a tail
        x = torch.randn(8, 100, generator=gen)
        alone = torch.cat([gemv.gemv(x[r:r + 1], w) for r in range(8)])
        for rows in range(1, 9):
            assert torch.equal(gemv.gemv(x[:rows], w), alone[:rows])
        assert (alone - x @ w.float().T).abs().max().item() < 1e-4
        assert gemv.gemv(x[:6].view(2, 3, 100), w).shape == (2, 3, 70)
        with pytest.raises(RuntimeError, match="1 to 8 rows"):
            gemv.gemv(torch.randn(9, 100), w)
    layer = DecodeLinear(w.float(), gemv)
    many = torch.randn(12, 100, generator=gen)
    assert (layer(many) - many @ w.float().T).abs().max().item() < 1e-4  # aten's GEMM
    assert layer(torch.randn(0, 100)).shape == (0, 70)


def test_batched_slots_on_the_kernel_give_the_tokens_of_each_sequence_alone(
        llama3_debug_folder: Path, tmp_path: Path) -> None:
    """Eight sequences decoded together through the kernel (one step, 8 rows) generate, token for
    token, what each generates alone (bf16 weights: the server's default)."""
    from llamahub.model.batching import TransformerSlots

    ref = _ref(llama3_debug_folder, tmp_path)
    prompts = [[1 + i, 7, 3 + 2 * i, 11][: 2 + i % 3] for i in range(8)]

    def greedy(slots: TransformerSlots, which: list[int], steps: int) -> dict[int, list[int]]:
        last = {s: int(slots.prefill(s, prompts[s]).argmax()) for s in which}
        out = {s: [last[s]] for s in which}
        for step in range(steps):
            logits = slots.decode(which, [last[s] for s in which], [len(prompts[s]) + step for s in which])
            for row, s in enumerate(which):
                last[s] = int(logits[row].argmax())
                out[s].append(last[s])
        return out

    together = greedy(TransformerSlots(build_decoder(ref.reader, "bf16"), 8), list(range(8)), 12)
    for s in range(8):
        assert greedy(TransformerSlots(build_decoder(ref.reader, "bf16"), 8), [s], 12)[s] == together[s]


def test_the_avx512_loops_give_the_very_sums_of_the_avx2_ones(tmp_path: Path) -> None:
    """Each 16-lane accumulator holds two of the AVX2 loop's 8-lane ones: the same numbers, on
    any CPU (``LLAMAHUB_CPU_AVX512=0`` runs the AVX2 loops in this process's child)."""
    import os
    import subprocess
    import sys

    from llamahub_cpu.kernels import kernel

    if isinstance(kernel(), str):
        pytest.skip(f"decode kernel unavailable: {kernel()}")
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-512: only the AVX2 loops run here")
    script = """
import sys, torch
from llamahub_cpu.kernels import kernel
gen = torch.Generator().manual_seed(0)
out = []
for dtype in (torch.float32, torch.bfloat16):
    for k in (100, 768):
        w = torch.randn(50, k, generator=gen).to(dtype)
        x = torch.randn(8, k, generator=gen)
        out += [kernel().gemv(x[:rows], w) for rows in (1, 3, 8)]
torch.save(out, sys.argv[1])
"""
    for name, env in (("wide", {}), ("avx2", {"LLAMAHUB_CPU_AVX512": "0"})):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True,
                       env={**os.environ, **env}, timeout=600)
    wide, avx2 = torch.load(tmp_path / "wide"), torch.load(tmp_path / "avx2")
    assert len(wide) == 12 and all(torch.equal(a, b) for a, b in zip(wide, avx2, strict=True))
