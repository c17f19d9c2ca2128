"""The cuda backend's tensor-parallel engine, run as 2 gloo ranks on CPU (1 thread each).

Parity is against the single-process reference model on the same files; failure handling is
checked by PID: no worker outlives its model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import llamahub_cuda
import psutil
import pytest
import torch
from llamahub_cuda.parallel import split_reason

from llamahub.errors import BackendError, NoBackendError
from llamahub.interfaces import LoadOptions
from llamahub.model.llm import LlamaModel
from llamahub.model.transformer import build_model
from llamahub.reference import folder_artifacts, open_reference
from llamahub.registry import Variant, shipped
from llamahub.testing import check_backend

TP2 = {"tp": 2}
VARIANTS = ("llama-debug-2-chat", "llama-debug-3.1-instruct")  # MHA + Llama 2; GQA + Llama 3.1 RoPE


def _options(**extra: object) -> LoadOptions:
    return LoadOptions(device="cpu", dtype="fp32", threads=1, extra=extra)


def _load(folder: Path, tmp: Path, variant: str, **extra: object) -> LlamaModel:
    return llamahub_cuda.CudaBackend().load(folder_artifacts(folder, tmp), shipped().resolve(variant),
                                            _options(**extra))


def _reference(folder: Path, tmp: Path, variant: str) -> LlamaModel:
    v = shipped().resolve(variant)
    ref = open_reference(folder_artifacts(folder, tmp), v)
    model = build_model(ref.args, ref.reader.state_dict())
    return LlamaModel(model, ref.tokenizer, v, backend="reference", dtype="fp32")


def _gone(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request: pytest.FixtureRequest, debug_root: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaModel, LlamaModel]]:
    """(2 gloo ranks, single-process reference) on the same checkpoint."""
    name = request.param
    folder = debug_root / name / name
    tmp = tmp_path_factory.mktemp("cuda")
    tp = _load(folder, tmp, name, **TP2)
    yield tp, _reference(folder, tmp, name)
    tp.close()


# --- parity -------------------------------------------------------------------------------------


def test_logits_match_the_reference(pair: tuple[LlamaModel, LlamaModel]) -> None:
    tp, ref = pair
    assert tp.info["tp"] == 2 and len(tp.info["pids"]) == 2
    gen = torch.Generator().manual_seed(0)
    vocab = tp.variant.arch.vocab_size
    with torch.inference_mode():
        for bsz, length in ((1, 9), (2, 40)):  # 80 tokens: more than the header carries inline
            tokens = torch.randint(0, vocab, (bsz, length), generator=gen)
            a, b = tp.decoder(tokens, 0), ref.decoder(tokens, 0)
            assert a.shape == b.shape == (bsz, length, vocab)
            assert (a - b).abs().max().item() < 1e-5
            for pos in range(length, length + 4):  # decode steps through each rank's KV cache
                step = torch.randint(0, vocab, (bsz, 1), generator=gen)
                assert (tp.decoder(step, pos) - ref.decoder(step, pos)).abs().max().item() < 1e-5


def test_generations_are_identical(pair: tuple[LlamaModel, LlamaModel]) -> None:
    tp, ref = pair
    kw = {"max_new_tokens": 12, "temperature": 0}
    assert tp.generate("The llama", **kw) == ref.generate("The llama", **kw)
    prompts = ["Once upon a time", "a", "The quick brown fox jumps"]
    assert tp.generate(prompts, **kw) == ref.generate(prompts, **kw)
    streamed = list(tp.generate("The llama", stream=True, **kw))
    assert "".join(streamed) == ref.generate("The llama", **kw)
    sampled = {"max_new_tokens": 12, "temperature": 0.9, "seed": 3}
    before = tp.decoder.stats()
    assert tp.generate("Hi", **sampled) == ref.generate("Hi", **sampled)
    after = tp.decoder.stats()  # rank 0's counters: one step per token, collectives timed
    assert after["steps"] - before["steps"] == 12
    assert 0 < after["comm_seconds"] - before["comm_seconds"] < after["step_seconds"] - before["step_seconds"]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_any_shard_count_on_one_and_two_ranks(shards: int, tmp_path: Path) -> None:
    v = shipped().resolve("llama-debug-2-chat")
    from llamahub.model.writer import generate_checkpoint

    folder = generate_checkpoint(v, tmp_path / "src", dtype=torch.float32, shards=shards, seed=shards)
    tokens = torch.tensor([[1, 5, 9, 200, 7, 3]])
    ref = _reference(folder, tmp_path, v.name)
    # Llama 2 splits the embedding on features; one file is resharded by vocabulary rows
    assert open_reference(folder_artifacts(folder, tmp_path), v).reader.embedding_split_dim() == (
        0 if shards == 1 else 1)
    one = _load(folder, tmp_path, v.name, tp=1)  # in this process, through the same split code
    two = _load(folder, tmp_path, v.name, **TP2)
    try:
        assert two.info["shards"] == shards
        with torch.inference_mode():
            want = ref.decoder(tokens, 0)
            assert (one.decoder(tokens, 0) - want).abs().max().item() < 1e-5
            assert (two.decoder(tokens, 0) - want).abs().max().item() < 1e-5
    finally:
        two.close()


@pytest.mark.parametrize("llama2_style", [False, True])
def test_eight_shards_as_the_70b_ships_on_one_and_two_ranks(llama2_style: bool, tmp_path: Path) -> None:
    """Meta's 70B layout: 8 files, GQA with 8 KV heads (1 per file), on 1 and 2 ranks (4 files each)."""
    from llamahub.model.args import ModelArgs
    from llamahub.model.checkpoint import open_checkpoint
    from llamahub.model.tokenizer import write_tiktoken_ranks
    from llamahub.model.writer import random_state_dict, write_meta
    from llamahub.reference import local_variant

    args = ModelArgs(dim=128, n_layers=2, n_heads=16, n_kv_heads=8, vocab_size=512, max_seq_len=64)
    folder = tmp_path / "m"
    folder.mkdir()
    write_tiktoken_ranks(folder / "tokenizer.model", args.vocab_size - 256)
    write_meta(folder, args, random_state_dict(args, seed=8), shards=8, llama2_style=llama2_style)
    assert len(list(folder.glob("consolidated.*.pth"))) == 8
    variant = local_variant(open_checkpoint(folder))
    ref = open_reference(folder_artifacts(folder, tmp_path), variant)
    want = build_model(ref.args, ref.reader.state_dict())
    tokens = torch.tensor([[1, 5, 9, 200, 7, 3]])
    one = llamahub_cuda.CudaBackend().load(folder_artifacts(folder, tmp_path), variant, _options(tp=1))
    two = llamahub_cuda.CudaBackend().load(folder_artifacts(folder, tmp_path), variant, _options(**TP2))
    try:
        assert two.info["shards"] == 8
        with torch.inference_mode():
            expected = want(tokens, 0)
            assert (one.decoder(tokens, 0) - expected).abs().max().item() < 1e-5
            assert (two.decoder(tokens, 0) - expected).abs().max().item() < 1e-5
    finally:
        two.close()


def test_an_hf_folder_is_sliced_the_same_way(tmp_path: Path) -> None:
    from llamahub.model.writer import generate_checkpoint

    v = shipped().resolve("llama-debug-3.1-instruct")
    folder = generate_checkpoint(v, tmp_path / "hf", fmt="hf", dtype=torch.float32)
    ref, tp = _reference(folder, tmp_path, v.name), _load(folder, tmp_path, v.name, **TP2)
    try:
        kw = {"max_new_tokens": 8, "temperature": 0}
        assert tp.generate(["The llama", "b"], **kw) == ref.generate(["The llama", "b"], **kw)
    finally:
        tp.close()


def test_a_rank_that_cannot_load_raises_its_own_error(debug_root: Path, tmp_path: Path) -> None:
    from llamahub.errors import CheckpointError

    name = "llama-debug-2-chat"  # 4 heads: 4 ranks fit, 3 do not (the plan refuses tp=3 earlier)
    with pytest.raises(CheckpointError, match=r"rank \d: .*not divisible by tp=3"):
        _load(debug_root / name / name, tmp_path, name, tp=3)


def test_a_rank_holds_about_its_slice(tmp_path: Path) -> None:
    """Peak RSS growth of rank 0 from before loading to after a forward (every weight read),
    2 shards on 2 ranks (each maps its own file): at most half the weights + 48 MiB (the first
    use of torch's kernels maps ~30 MiB of their code; KV cache, activations), well under the
    whole model's 200 MiB. (Resharding 1 file onto 2 ranks measured 124-157 MiB: the slices,
    plus source pages of the tensor being copied until they are dropped.)"""
    from llamahub.model.args import ModelArgs
    from llamahub.model.checkpoint import open_checkpoint
    from llamahub.model.tokenizer import write_tiktoken_ranks
    from llamahub.model.writer import random_state_dict, write_meta
    from llamahub.reference import local_variant

    args = ModelArgs(dim=1024, n_layers=4, n_heads=8, vocab_size=512, max_seq_len=256)
    folder = tmp_path / "m"
    folder.mkdir()
    write_tiktoken_ranks(folder / "tokenizer.model", args.vocab_size - 256)
    write_meta(folder, args, random_state_dict(args), shards=2)
    weights = args.param_count() * 4
    assert weights > 190 * 2**20
    variant = local_variant(open_checkpoint(folder))
    model = llamahub_cuda.CudaBackend().load(folder_artifacts(folder, tmp_path), variant, _options(**TP2))
    try:
        model.generate("a", max_new_tokens=2, temperature=0)
        stats = model.decoder.stats()
        grew = stats["peak_rss_bytes"] - model.decoder.ready[0]["rss_before_load"]
        assert 0.4 * weights < grew < 0.5 * weights + 48 * 2**20, (grew / 2**20, weights / 2**20)
    finally:
        model.close()


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_worker_is_detected_and_raises(victim: int, debug_root: Path, tmp_path: Path) -> None:
    name = "llama-debug-3.1-instruct"
    model = _load(debug_root / name / name, tmp_path, name, **TP2)
    pids = model.info["pids"]
    stream = model.generate("The llama", stream=True, max_new_tokens=200, temperature=0)
    next(stream)
    os.kill(pids[victim], signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(BackendError, match=rf"rank {victim} \(pid {pids[victim]}\) died"):
        for _ in stream:
            pass
    assert time.monotonic() - started < 5
    assert _gone(pids)
    with pytest.raises(BackendError, match="closed"):  # for good: load it again
        model.generate("again", max_new_tokens=2)


def test_a_worker_killed_while_idle_fails_the_next_call(debug_root: Path, tmp_path: Path) -> None:
    name = "llama-debug-2-chat"
    model = _load(debug_root / name / name, tmp_path, name, **TP2)
    pids = model.info["pids"]
    os.kill(pids[1], signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(BackendError, match="rank 1"):
        model.generate("hello", max_new_tokens=3, temperature=0)
    assert _gone(pids)


def test_close_and_garbage_collection_stop_every_worker(debug_root: Path, tmp_path: Path) -> None:
    import gc

    name = "llama-debug-2-chat"
    model = _load(debug_root / name / name, tmp_path, name, **TP2)
    pids = model.info["pids"]
    assert all(psutil.pid_exists(p) for p in pids)
    model.close()
    assert _gone(pids, within=0.5)  # close() waits for them

    model = _load(debug_root / name / name, tmp_path, name, **TP2)
    pids = model.info["pids"]
    model.generate("hi", max_new_tokens=2)
    del model
    gc.collect()
    assert _gone(pids)


DRIVER = """
import sys
from pathlib import Path

from llamahub_cuda import CudaBackend
from llamahub.interfaces import LoadOptions
from llamahub.reference import folder_artifacts
from llamahub.registry import shipped

if __name__ == "__main__":
    folder, cache, name = sys.argv[1:4]
    m = CudaBackend().load(folder_artifacts(Path(folder), Path(cache)),
                           shipped().resolve(name),
                           LoadOptions(device="cpu", dtype="fp32", threads=1, extra={"tp": 2}))
    print(" ".join(map(str, m.info["pids"])), flush=True)
    while True:
        m.generate("The llama", max_new_tokens=50, temperature=0)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_a_killed_driver_leaves_no_worker(sig: int, debug_root: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the terminal's whole process group; a SIGKILLed driver cleans nothing up."""
    name = "llama-debug-2-chat"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    proc = subprocess.Popen([sys.executable, str(script), str(debug_root / name / name), str(tmp_path),
                             name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2, proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.5)  # mid-generation
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        proc.wait(timeout=15)
        assert _gone(pids)
        if sig == signal.SIGINT:
            assert "KeyboardInterrupt" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_nodes_meet_at_a_rendezvous_on_localhost(debug_root: Path, tmp_path: Path) -> None:
    """Node 0 is this process (driver + rank 0); node 1 is a launcher process with rank 1."""
    from llamahub_cuda.driver import free_port

    name = "llama-debug-3.1-instruct"
    folder = debug_root / name / name
    port = free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    node1 = subprocess.Popen([sys.executable, "-m", "llamahub_cuda.node", "--nnodes", "2",
                              "--node-rank", "1", "--timeout", "60"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        model = _load(folder, tmp_path, name, tp=2, nnodes=2, master_port=port)
        assert len(model.info["pids"]) == 1  # only rank 0 runs here
        kw = {"max_new_tokens": 10, "temperature": 0}
        assert model.generate(["The llama", "hi"], **kw) == \
            _reference(folder, tmp_path, name).generate(["The llama", "hi"], **kw)
        model.close()
        _, err = node1.communicate(timeout=15)
        assert node1.returncode == 0, err
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()


# --- the backend as a plugin --------------------------------------------------------------------


def test_conforms_and_is_never_chosen_by_accident(llama2_debug_folder: Path,
                                                  plugin_manager: object) -> None:
    import llamahub

    b = llamahub_cuda.CudaBackend()
    check_backend(b)
    assert b.priority < 10  # below the cpu backend's
    plugin_manager.register(llamahub_cuda, name="cuda")  # type: ignore[attr-defined]
    m = llamahub.load(llama2_debug_folder)
    assert m.backend == "cpu"
    m.close()
    v = shipped().resolve("llama-debug-2-chat")
    assert "asked" in (b.unsupported_reason(v, LoadOptions(device="cpu")) or "")
    assert b.unsupported_reason(v, LoadOptions(device="cpu", extra=TP2)) is None
    assert "tp" in (b.unsupported_reason(v, LoadOptions(device="cpu", extra={"tp": 0})) or "")
    assert "not divisible" in (b.unsupported_reason(v, LoadOptions(device="cpu", extra={"tp": 3})) or "")
    assert "flash" in (b.unsupported_reason(v, LoadOptions(extra={"tp": 2, "flash": 1})) or "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_cuda_is_refused_with_the_reason(llama2_debug_folder: Path,
                                                      plugin_manager: object) -> None:
    import llamahub

    plugin_manager.register(llamahub_cuda, name="cuda")  # type: ignore[attr-defined]
    with pytest.raises(NoBackendError, match="no CUDA device"):
        llamahub.load(llama2_debug_folder, device="cuda")


def test_plan_divides_weights_and_cache_between_ranks() -> None:
    b = llamahub_cuda.CudaBackend()
    v: Variant = shipped().resolve("llama-2-7b")
    one = b.plan(v, LoadOptions(device="cpu", dtype="bf16", extra={"tp": 1}))
    two = b.plan(v, LoadOptions(device="cpu", dtype="bf16", extra=TP2))
    weights_and_kv = one.host_bytes - llamahub_cuda.WORKING_BYTES
    assert weights_and_kv > v.param_count() * 2
    assert two.host_bytes == weights_and_kv + 2 * (llamahub_cuda.WORKING_BYTES + llamahub_cuda.PROCESS_BYTES)
    gpu = b.plan(v, LoadOptions(device="cuda", dtype="bf16", extra={"tp": 4}))
    assert gpu.devices == 4 and gpu.device == "cuda" and gpu.device_bytes < weights_and_kv / 3
    assert split_reason(v.arch, 3) and split_reason(v.arch, 4) is None
