"""The tpu backend for real on XLA's CPU device (the XLA venv: torch 2.9 + torch_xla 2.9).

Each device count runs in a process of its own (SPMD is process-wide in torch_xla) through
``tests/backends/xla_runner.py``; this process compares its results with our cpu backend
(fp32, the aten path) on the same files. Skipped where torch_xla is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from llamahub.interfaces import LoadOptions
from llamahub.model.llm import LlamaModel
from llamahub.reference import folder_artifacts
from llamahub.registry import shipped

pytestmark = [
    pytest.mark.xla,
    pytest.mark.skipif(importlib.util.find_spec("torch_xla") is None,
                       reason="needs torch_xla: run in the XLA venv with PJRT_DEVICE=CPU (.ci/run)"),
]

VARIANTS = ("llama-debug-2-chat", "llama-debug-3.1-instruct")  # MHA + Llama 2; GQA + Llama 3.1 RoPE
PROMPTS = ["The llama", "Once upon a time", "a"]
BATCHES = [[1, 9], [2, 20]]
RUNNER = Path(__file__).with_name("xla_runner.py")


class XlaRun:
    """One runner process (started at once, so that the device counts run side by side)."""

    def __init__(self, folders: dict[str, Path], devices: int, tmp: Path, dtype: str = "fp32") -> None:
        spec = tmp / f"spec-{devices}-{dtype}.json"
        self.out = tmp / f"out-{devices}-{dtype}.pt"
        spec.write_text(json.dumps({"devices": devices, "dtype": dtype, "batches": BATCHES,
                                    "prompts": PROMPTS, "folders": {k: str(v) for k, v in folders.items()}}))
        env = os.environ | {"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "2",
                            "LLAMAHUB_PLUGINS": "cpu,tpu,sources"}
        self.log = (tmp / "stderr.txt").open("w+")
        self.proc = subprocess.Popen([sys.executable, str(RUNNER), str(spec), str(self.out)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)

    def result(self) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout=1200)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.log.seek(0)
        errors = self.log.read()[-4000:]
        self.log.close()
        assert code == 0, errors
        return torch.load(self.out, weights_only=False)


@pytest.fixture(scope="module")
def folders(debug_root: Path) -> dict[str, Path]:
    return {name: debug_root / name / name for name in VARIANTS}


@pytest.fixture(scope="module")
def runs(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[int, XlaRun]:
    return {n: XlaRun(folders, n, tmp_path_factory.mktemp(f"xla{n}")) for n in (1, 2)}


@pytest.fixture(scope="module")
def results(runs: dict[int, XlaRun]) -> dict[int, dict[str, Any]]:
    return {n: run.result() for n, run in runs.items()}


@pytest.fixture(params=[1, 2], ids=["1dev", "2dev"])
def xla(request: pytest.FixtureRequest, results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {"devices": request.param, "results": results[request.param]}


@pytest.fixture(scope="module")
def cpu_models(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, LlamaModel]:
    import llamahub_cpu

    tmp = tmp_path_factory.mktemp("cpu")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("LLAMAHUB_CPU_KERNEL", "0")  # the aten path: no kernel build in this venv
        return {name: llamahub_cpu.CpuBackend().load(folder_artifacts(folder, tmp), shipped().resolve(name),
                                                     LoadOptions(dtype="fp32"))
                for name, folder in folders.items()}


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_match_the_cpu_backend(xla: dict[str, Any], cpu_models: dict[str, LlamaModel],
                                      name: str) -> None:
    cpu, results = cpu_models[name], xla["results"][name]
    assert results["info"]["device"] == "xla:cpu" and results["info"]["devices"] == xla["devices"]
    for run in results["logits"]:
        tokens, steps = run["tokens"], run["steps"]
        with torch.inference_mode():
            want = [cpu.decoder(tokens, 0)]
            want += [cpu.decoder(steps[:, i:i + 1], tokens.shape[1] + i) for i in range(3)]
        expected = torch.cat(want, dim=1)
        assert run["logits"].shape == expected.shape == (*tokens.shape[:1], tokens.shape[1] + 3,
                                                         cpu.variant.arch.vocab_size)
        assert (run["logits"] - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_generations_are_token_identical(xla: dict[str, Any], cpu_models: dict[str, LlamaModel],
                                                name: str) -> None:
    cpu, gens = cpu_models[name], xla["results"][name]["generations"]
    greedy = {"max_new_tokens": 12, "temperature": 0}
    assert gens["single"] == [cpu.generate(p, **greedy) for p in PROMPTS]
    assert gens["batch"] == cpu.generate(PROMPTS, **greedy)  # prompts of different lengths
    assert gens["stream"] == gens["single"][0]
    assert gens["chat"] == cpu.chat([{"role": "user", "content": PROMPTS[0]}], **greedy)
    assert any(gens["single"])  # gibberish, but text


@pytest.mark.parametrize("name", VARIANTS)
def test_no_compilation_after_warm_up(xla: dict[str, Any], name: str) -> None:
    c = xla["results"][name]["compiles"]
    assert max(c["prompt_lengths"]) <= 16 and len(set(c["prompt_lengths"])) > 1  # one bucket
    assert c["warm"] > 0
    assert c["after"] == c["warm"], "more tokens, other prompts or other seeds compiled again"
    first, second = c["seeded"]
    assert first == second  # sampling on the device is repeatable by seed
    assert isinstance(c["other_seed"], str)


def test_weights_and_cache_are_sharded_along_the_tensor_parallel_split(xla: dict[str, Any]) -> None:
    for name in VARIANTS:
        s, info = xla["results"][name]["shardings"], xla["results"][name]["info"]
        if xla["devices"] == 1:
            assert not info["spmd"] and not any(s.values())
            continue
        assert info["spmd"]
        # column-parallel [out, in] split on rows, row-parallel on columns, norms replicated
        assert "devices=[2,1]" in s["wq"] and "devices=[2,1]" in s["w1"], s
        assert "devices=[1,2]" in s["wo"] and "devices=[1,2]" in s["w2"], s
        assert "devices=[1,2,1,1]" in s["cache"], s
        assert s["norm"] in ("", "{replicated}"), s


def test_a_process_cannot_switch_between_sharded_and_one_device(xla: dict[str, Any]) -> None:
    said = xla["results"]["other_mode"]
    mode = "on one device" if xla["devices"] == 1 else "sharded across devices (SPMD)"
    assert f"already runs XLA models {mode}" in said and "in a new process" in said, said


def test_the_compilation_cache_is_in_the_derived_artifacts(xla: dict[str, Any]) -> None:
    for name in VARIANTS:
        cache = Path(xla["results"][name]["info"]["compile_cache"])
        assert cache.parent.parent.name == "derived" and cache.name == f"xla-cpu-{xla['devices']}dev"
        assert any(cache.iterdir()), "no compiled program was written to the persistent cache"


def test_conforms_to_the_backend_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, on one XLA:CPU device: load, generate (repeatable, streamed), close."""
    import llamahub_tpu

    from llamahub.testing import check_backend, tiny_artifacts

    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", "1")
    artifacts, variant = tiny_artifacts(tmp_path)
    check_backend(llamahub_tpu.TpuBackend(), artifacts, variant)
