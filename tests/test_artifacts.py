"""Backends open their own artifacts: the core hands over what is there, whatever its format."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

import llamahub
from llamahub.errors import NotACheckpointError
from llamahub.interfaces import Artifacts, Capacity, LoadOptions, MemoryPlan


class GgufBackend:
    """Stands in for a llama.cpp backend: it takes GGUF files the reference path cannot read."""

    name, priority, description = "gguf-test", 50, "reads *.gguf"
    dtypes, devices = ("q4_0",), ("cpu",)

    def __init__(self) -> None:
        self.seen: list[Artifacts] = []

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, variant, options: LoadOptions) -> str | None:
        return None if options.extra.get("gguf") else "pass gguf=True"

    def plan(self, variant, options: LoadOptions) -> MemoryPlan:
        return MemoryPlan(host_bytes=1, dtype="q4_0")

    def capacity(self) -> Capacity:
        return Capacity(host_bytes=2**40)

    def load(self, artifacts: Artifacts, variant, options: LoadOptions):
        self.seen.append(artifacts)
        return "a model"


@pytest.fixture
def gguf_backend(plugin_manager) -> GgufBackend:
    backend = GgufBackend()
    mod = types.ModuleType("gguf_plugin")
    mod.register_backends = llamahub.hookimpl(lambda register: register(backend))  # type: ignore[attr-defined]
    plugin_manager.register(mod)
    return backend


def test_a_folder_the_reference_path_cannot_read_reaches_the_backend(tmp_path: Path, gguf_backend,
                                                                      llama2_debug_folder: Path) -> None:
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "model-q4_0.gguf").write_bytes(b"GGUF" + bytes(60))
    shutil.copy(llama2_debug_folder.parent / "tokenizer.model", folder / "tokenizer.model")
    with pytest.raises(NotACheckpointError, match="name the variant"):
        llamahub.load(folder, gguf=True)
    assert llamahub.load(folder, variant="llama-debug-2-chat", gguf=True) == "a model"
    (artifacts,) = gguf_backend.seen
    assert artifacts.formats == {"gguf", "tokenizer"} and artifacts.folder == folder.resolve()
    # the CPU backend, asked for the same folder, says what it could not find
    with pytest.raises(NotACheckpointError, match=r"params\.json"):
        llamahub.load(folder, variant="llama-debug-2-chat", backend="cpu")


def test_derived_artifacts_live_in_the_core_cache_per_snapshot(tmp_path: Path, gguf_backend,
                                                               llama2_debug_folder: Path) -> None:
    llamahub.load(llama2_debug_folder, gguf=True)
    (artifacts,) = gguf_backend.seen
    assert artifacts.formats >= {"meta", "tokenizer"}
    home = Path(__import__("os").environ["LLAMAHUB_HOME"])
    out = artifacts.derived("q4_0")
    assert out.is_dir() and out.is_relative_to(home / "cache" / "derived" / artifacts.snapshot_id)
    assert artifacts.sidecar("q4_0") is None
    artifacts.write_sidecar("q4_0", {"file": "model.gguf", "bytes": 123})
    assert artifacts.sidecar("q4_0") == {"file": "model.gguf", "bytes": 123}
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())
    with pytest.raises(ValueError, match="key"):
        artifacts.derived("../escape")
    llamahub.load(llama2_debug_folder, gguf=True)  # same files: same snapshot, same derived folder
    assert gguf_backend.seen[1].derived_root == artifacts.derived_root
