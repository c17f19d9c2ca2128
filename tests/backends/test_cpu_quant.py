"""The CPU backend's int8/int4 models: loaded by ``llamahub.load``, agreeing with fp32, planned at
their quantized size, and their quantized weights cached once per snapshot and scheme."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import llamahub_cpu
import pytest
import torch
from llamahub_cpu.artifact import FILE, artifact_key
from llamahub_cpu.engine import build_decoder, build_quant_decoder
from llamahub_cpu.quant import QuantLinear, WideEmbedding

from llamahub.interfaces import Artifacts, LoadOptions
from llamahub.reference import folder_artifacts, open_reference
from llamahub.registry import shipped

# Teacher-forced top-1 agreement with fp32 and mean KL(fp32 || quantized) over a fixed 96-token
# sequence, on the random-weight debug variants (vocab 512, near-flat logits: near-ties flip, the
# hardest case for agreement). Measured (llama-debug-2-chat / -3.1-instruct): int8 0.990 / 0.969,
# KL < 1e-5; int4 0.854 / 0.917, KL 6e-5 / 5e-5.
AGREEMENT = {"int8": 0.95, "int4": 0.80}
MAX_KL = {"int8": 2e-5, "int4": 3e-4}


def _open(folder: Path, cache: Path) -> tuple[Artifacts, object]:
    artifacts = folder_artifacts(folder, cache)
    return artifacts, open_reference(artifacts, shipped().resolve(folder.name))


def _tokens(vocab: int, n: int = 96) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("which", ["llama2_debug_folder", "llama3_debug_folder"])
def test_top1_agreement_with_fp32(scheme: str, which: str, request: pytest.FixtureRequest,
                                  tmp_path: Path) -> None:
    folder = request.getfixturevalue(which)
    artifacts, ref = _open(folder, tmp_path)
    tokens = _tokens(ref.args.vocab_size)
    with torch.inference_mode():
        fp32 = build_decoder(ref.reader, "fp32")(tokens, 0)
        model, _ = build_quant_decoder(artifacts, ref.reader, scheme)
        prefill = model(tokens, 0)  # the GEMM path, float activations
        model.reset_cache()  # decode, one token at a time: 8-bit activations, integer dots
        decode = torch.cat([model(tokens[:, i:i + 1], i) for i in range(tokens.shape[1])], dim=1)
    assert (decode - prefill).norm() <= 0.02 * prefill.norm()
    for quant in (prefill, decode):
        agree = (quant.argmax(-1) == fp32.argmax(-1)).float().mean().item()
        assert agree >= AGREEMENT[scheme], agree
        kl = torch.nn.functional.kl_div(quant.log_softmax(-1), fp32.log_softmax(-1), log_target=True,
                                        reduction="none").sum(-1).mean().item()
        assert kl < MAX_KL[scheme], kl


def test_model_is_quantized_with_the_stated_precisions(llama3_debug_folder: Path, tmp_path: Path) -> None:
    artifacts, ref = _open(llama3_debug_folder, tmp_path)
    model, cache = build_quant_decoder(artifacts, ref.reader, "int4")
    assert cache["built"] is True
    ffn = model.layers[0].feed_forward.w1
    assert isinstance(ffn, QuantLinear) and ffn.scheme == "int4" and ffn.q.dtype == torch.uint8
    assert isinstance(model.output, QuantLinear) and model.output.scheme == "int8"
    assert isinstance(model.tok_embeddings, WideEmbedding)
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert model.norm.weight.dtype == torch.float32
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_load_by_path_reports_kernel_and_cache(llama2_debug_folder: Path) -> None:
    import llamahub

    m = llamahub.load(llama2_debug_folder, dtype="int8")
    assert m.dtype == "int8" and m.info["quantized"]["built"] is True
    assert "int8" in m.info["kernel"] and ("AVX" in m.info["kernel"] or "plain torch" in m.info["kernel"])
    first = m.generate("hello", max_new_tokens=8, temperature=0)
    m.close()
    again = llamahub.load(llama2_debug_folder, dtype="int8")
    assert again.info["quantized"]["built"] is False  # mapped from the cache
    assert again.generate("hello", max_new_tokens=8, temperature=0) == first
    batch = again.generate(["hello", "a longer prompt than that"], max_new_tokens=4, temperature=0)
    assert len(batch) == 2
    again.close()


def _artifact(artifacts: Artifacts, scheme: str) -> Path:
    return artifacts.derived(artifact_key(scheme)) / FILE


def test_cached_artifact_is_reused_and_memory_mapped(llama2_debug_folder: Path, tmp_path: Path) -> None:
    artifacts, ref = _open(llama2_debug_folder, tmp_path)
    _, first = build_quant_decoder(artifacts, ref.reader, "int8")
    path = _artifact(artifacts, "int8")
    stamp = path.stat().st_mtime_ns
    model, second = build_quant_decoder(artifacts, ref.reader, "int8")
    assert first["built"] and not second["built"] and path.stat().st_mtime_ns == stamp
    sidecar = json.loads((artifacts.derived_root / f"{artifact_key('int8')}.json").read_text())
    assert sidecar["size"] == path.stat().st_size and sidecar["snapshot"] == artifacts.snapshot_id
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    if maps:
        assert str(path) in maps  # the tensors are views of the file, not copies
    assert model.layers[0].attention.wq.q.shape[0] == ref.args.dim


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "sidecar"])
def test_corrupt_artifact_is_detected_and_rebuilt(damage: str, llama2_debug_folder: Path,
                                                  tmp_path: Path) -> None:
    artifacts, ref = _open(llama2_debug_folder, tmp_path)
    tokens = _tokens(ref.args.vocab_size, 8)
    model, _ = build_quant_decoder(artifacts, ref.reader, "int4")
    with torch.inference_mode():
        good = model(tokens, 0)
    path = _artifact(artifacts, "int4")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF  # inside the last tensor's bytes: same size, different contents
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage":
        path.write_bytes(b"\x00" * len(data))
    else:
        (artifacts.derived_root / f"{artifact_key('int4')}.json").write_text("{not json")
    rebuilt, cache = build_quant_decoder(artifacts, ref.reader, "int4")
    assert cache["built"] is True and cache["rebuilt_because"]
    assert path.stat().st_size == len(data)
    sidecar = artifacts.derived_root / f"{artifact_key('int4')}.json"
    assert json.loads(sidecar.read_text())["size"] == len(data)
    with torch.inference_mode():  # (a near-tie between two int4 scale candidates may round either way)
        assert torch.allclose(rebuilt(tokens, 0), good, rtol=1e-3, atol=1e-3)
    assert build_quant_decoder(artifacts, ref.reader, "int4")[1]["built"] is False


def test_touched_but_identical_artifact_is_kept(llama2_debug_folder: Path, tmp_path: Path) -> None:
    artifacts, ref = _open(llama2_debug_folder, tmp_path)
    build_quant_decoder(artifacts, ref.reader, "int8")
    path = _artifact(artifacts, "int8")
    os.utime(path, ns=(1, 1))
    _, cache = build_quant_decoder(artifacts, ref.reader, "int8")
    assert cache["built"] is False  # re-hashed, same bytes


def test_artifact_is_rebuilt_when_the_snapshot_changes(llama2_debug_folder: Path, tmp_path: Path) -> None:
    from llamahub.model.writer import generate_checkpoint

    folder = tmp_path / "model" / llama2_debug_folder.name
    shutil.copytree(llama2_debug_folder.parent, folder.parent)
    artifacts, ref = _open(folder, tmp_path / "cache")
    model, first = build_quant_decoder(artifacts, ref.reader, "int8")
    assert first["built"]
    regen = tmp_path / "regen"
    generate_checkpoint(shipped().resolve(folder.name), regen, dtype=torch.float32, seed=1)
    shutil.copy(regen / folder.name / "consolidated.00.pth", folder / "consolidated.00.pth")
    artifacts2, ref2 = _open(folder, tmp_path / "cache")
    assert artifacts2.snapshot_id != artifacts.snapshot_id
    model2, second = build_quant_decoder(artifacts2, ref2.reader, "int8")
    assert second["built"]
    assert not torch.equal(model2.layers[0].attention.wq.q, model.layers[0].attention.wq.q)


@pytest.mark.parametrize("scheme,ratio", [("int8", 0.30), ("int4", 0.17)])
def test_plan_knows_quantized_sizes(scheme: str, ratio: float) -> None:
    b = llamahub_cpu.CpuBackend()
    v = shipped().resolve("llama-2-7b")
    plan = b.plan(v, LoadOptions(dtype=scheme, context_length=16))
    fp32 = b.plan(v, LoadOptions(dtype="fp32", context_length=16))
    weights = llamahub_cpu.weight_bytes(v, scheme)
    assert plan.dtype == scheme and plan.host_bytes - weights == fp32.host_bytes - v.param_count() * 4
    assert abs(weights / (v.param_count() * 4) - ratio) < 0.03


def test_plan_matches_the_file_written(llama2_debug_folder: Path, tmp_path: Path) -> None:
    artifacts, ref = _open(llama2_debug_folder, tmp_path)
    v = shipped().resolve(llama2_debug_folder.name)
    for scheme in ("int8", "int4"):
        build_quant_decoder(artifacts, ref.reader, scheme)
        size = _artifact(artifacts, scheme).stat().st_size
        assert 0 < size - llamahub_cpu.weight_bytes(v, scheme) < 64 * 1024  # the header's JSON


def test_backend_lists_the_quantized_dtypes() -> None:
    b = llamahub_cpu.CpuBackend()
    assert {"int8", "int4"} <= set(b.dtypes)
    assert "int8, int4 on " in b.description
    v = shipped().resolve("llama-debug-2")
    assert b.unsupported_reason(v, LoadOptions(dtype="int4")) is None
    assert "int2" in (b.unsupported_reason(v, LoadOptions(dtype="int2")) or "")


def test_refusal_names_the_quantized_need() -> None:
    import llamahub
    from llamahub.errors import NoBackendError

    with pytest.raises(NoBackendError) as info:
        llamahub.load("llama-3.1-405b", dtype="int4", backend="cpu")
    v = shipped().resolve("llama-3.1-405b")
    plan = llamahub_cpu.CpuBackend().plan(v, LoadOptions(dtype="int4"))
    bf16 = llamahub_cpu.CpuBackend().plan(v, LoadOptions(dtype="bf16"))
    assert plan.host_bytes < bf16.host_bytes / 2
    assert f"int4      {plan.host_bytes / 2**30:.1f} GiB" in str(info.value)


def test_plain_torch_fallback_is_reported_and_agrees(llama2_debug_folder: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from llamahub_cpu import kernels

    artifacts, ref = _open(llama2_debug_folder, tmp_path)
    tokens = _tokens(ref.args.vocab_size, 12)
    fast, _ = build_quant_decoder(artifacts, ref.reader, "int4")
    saved = dict(kernels._cache)
    monkeypatch.setenv("LLAMAHUB_CPU_KERNEL", "0")
    kernels._cache.clear()
    try:
        plain, _ = build_quant_decoder(artifacts, ref.reader, "int4")
    finally:
        kernels._cache.clear()
        kernels._cache.update(saved)
    assert plain.kernel.startswith("plain torch int4") and "LLAMAHUB_CPU_KERNEL=0" in plain.kernel
    with torch.inference_mode():
        assert torch.allclose(plain(tokens, 0), fast(tokens, 0), rtol=1e-4, atol=1e-4)
        # one token: the kernel rounds activations to 8 bits per block of 32, plain torch does not
        one, fast_one = plain(tokens[:, :1], 0), fast(tokens[:, :1], 0)
        assert (fast_one - one).norm() <= 0.02 * one.norm()
        assert torch.equal(fast_one.argmax(-1), one.argmax(-1))
