"""Plugin discovery, the allowlist, broken plugins, and backend selection."""

from __future__ import annotations

import sys
import types

import pytest

import llamahub
from llamahub import plugins, selection
from llamahub.errors import NoBackendError, PluginError
from llamahub.interfaces import Capacity, LoadOptions, MemoryPlan
from llamahub.registry import _builtin

VARIANT = _builtin().resolve("llama-debug-2-chat")


class FakeBackend:
    dtypes = ("bf16",)
    devices = ("fake",)

    def __init__(self, name: str, priority: int, *, unavailable: str | None = None,
                 memory: int = 1) -> None:
        self.name, self.priority, self.description = name, priority, f"fake {name}"
        self._unavailable, self._memory = unavailable, memory

    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def unsupported_reason(self, variant, options) -> str | None:
        return None

    def plan(self, variant, options) -> MemoryPlan:
        return MemoryPlan(host_bytes=self._memory, dtype="bf16")

    def capacity(self) -> Capacity:
        return Capacity(host_bytes=2**40)

    def load(self, artifacts, variant, options):
        raise AssertionError("not loaded in these tests")


def _plugin(*backends: FakeBackend, select=None) -> types.ModuleType:
    mod = types.ModuleType("fake_plugin")

    @llamahub.hookimpl
    def register_backends(register):
        for b in backends:
            register(b)

    mod.register_backends = register_backends
    if select is not None:
        mod.select_backend = llamahub.hookimpl(select)
    return mod


def test_highest_priority_available_backend_wins(plugin_manager) -> None:
    plugin_manager.register(_plugin(FakeBackend("fast", 50), FakeBackend("gpu", 99, unavailable="no GPU")))
    assert selection.choose(VARIANT, LoadOptions()).name == "fast"


def test_explicit_backend_beats_priority(plugin_manager) -> None:
    plugin_manager.register(_plugin(FakeBackend("fast", 50)))
    assert selection.choose(VARIANT, LoadOptions(backend="cpu")).name == "cpu"


def test_select_backend_hook_decides_among_candidates(plugin_manager) -> None:
    def select_backend(variant, options, candidates):
        return next(c for c in candidates if c.name == "cpu")

    plugin_manager.register(_plugin(FakeBackend("fast", 50), select=select_backend))
    assert selection.choose(VARIANT, LoadOptions()).name == "cpu"


def test_hook_returning_a_non_candidate_is_an_error(plugin_manager) -> None:
    plugin_manager.register(_plugin(FakeBackend("gpu", 9, unavailable="no GPU"),
                                    select=lambda variant, options, candidates: "gpu"))
    with pytest.raises(PluginError, match="not a candidate"):
        selection.choose(VARIANT, LoadOptions())


def test_refusal_lists_every_backend_and_why(plugin_manager) -> None:
    plugin_manager.register(_plugin(FakeBackend("gpu", 99, unavailable="no CUDA device found"),
                                    FakeBackend("huge", 5, memory=10**15)))
    with pytest.raises(NoBackendError) as e:
        selection.choose(VARIANT, LoadOptions(dtype="int3"))
    text = str(e.value)
    assert "no CUDA device found" in text and "GiB" in text and "int3" in text
    assert set(e.value.reasons) == {"cpu", "gpu", "huge"}


def test_unknown_explicit_backend(plugin_manager) -> None:
    with pytest.raises(NoBackendError, match="not installed"):
        selection.choose(VARIANT, LoadOptions(backend="tpu9"))


def test_duplicate_backend_names_are_refused(plugin_manager) -> None:
    plugin_manager.register(_plugin(FakeBackend("cpu", 1)))
    with pytest.raises(PluginError, match="two plugins"):
        plugins.backends()


def test_entry_points_load_in_tree_backend_and_honour_allowlist(monkeypatch) -> None:
    pm = plugins.new_manager()
    monkeypatch.setenv(plugins.ALLOWLIST_ENV, "cpu")
    records = plugins.load_entry_points(pm)
    assert [r.name for r in records] == ["cpu"]
    assert records[0].distribution == "llamahub" and records[0].error is None
    assert pm.get_plugin("cpu") is sys.modules["llamahub_cpu"]
    monkeypatch.setenv(plugins.ALLOWLIST_ENV, "")
    assert plugins.load_entry_points(plugins.new_manager()) == []


def test_broken_plugin_is_reported_not_raised(monkeypatch) -> None:
    import importlib.metadata as md

    broken = md.EntryPoint(name="broken", value="llamahub_no_such_module", group=plugins.GROUP)
    monkeypatch.setattr(md, "entry_points", lambda group: [broken])
    monkeypatch.delenv(plugins.ALLOWLIST_ENV, raising=False)
    (rec,) = plugins.load_entry_points(plugins.new_manager())
    assert rec.name == "broken" and "ModuleNotFoundError" in (rec.error or "")


def test_importing_llamahub_loads_no_plugins_and_no_torch() -> None:
    import subprocess

    code = ("import sys, llamahub; from llamahub import plugins; "
            "print(plugins._state.pm is None, 'torch' in sys.modules, 'llamahub_cpu' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]
