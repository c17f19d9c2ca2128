"""The tpu backend's checks that need no XLA device: availability, refusals, memory plans.

The ones that need torch_xla (or its absence) say so; the rest run in every venv.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import llamahub_tpu
import pytest

import llamahub
from llamahub.errors import NoBackendError
from llamahub.interfaces import LoadOptions
from llamahub.registry import shipped

HAS_XLA = importlib.util.find_spec("torch_xla") is not None
XLA = LoadOptions(device="xla")


@pytest.fixture
def xla_cpu(monkeypatch: pytest.MonkeyPatch, plugin_manager: object) -> llamahub_tpu.TpuBackend:
    """XLA's CPU device with 2 devices, and the tpu backend registered."""
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", "2")
    plugin_manager.register(llamahub_tpu, name="tpu")  # type: ignore[attr-defined]
    return llamahub_tpu.TpuBackend()


@pytest.mark.skipif(HAS_XLA, reason="torch_xla is installed here")
def test_without_torch_xla_it_is_unavailable_with_the_install_command(
        xla_cpu: llamahub_tpu.TpuBackend, llama2_debug_folder: Path) -> None:
    why = xla_cpu.unavailable_reason()
    assert why is not None and "torch_xla is not installed" in why and "torch-xla" in why
    with pytest.raises(NoBackendError) as e:
        llamahub.load(llama2_debug_folder, device="xla")
    assert "pip install torch==2.9.0" in str(e.value) and "tpu" in str(e.value)
    listed = subprocess.run([sys.executable, "-m", "llamahub.cli", "plugins"], capture_output=True,
                            text=True, env=os.environ | {"LLAMAHUB_PLUGINS": "cpu,tpu"})
    assert "tpu" in listed.stdout and "torch_xla is not installed" in listed.stdout, listed.stdout


def test_without_a_pjrt_device_it_says_how_to_choose_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    why = llamahub_tpu.TpuBackend().unavailable_reason()
    assert why is not None
    if HAS_XLA and importlib.util.find_spec("libtpu") is None:
        assert "PJRT_DEVICE=TPU" in why and "PJRT_DEVICE=CPU" in why


def test_never_chosen_unless_asked(xla_cpu: llamahub_tpu.TpuBackend) -> None:
    v = shipped().resolve("llama-debug-2-chat")
    assert "only when asked" in (xla_cpu.unsupported_reason(v, LoadOptions()) or "")
    assert xla_cpu.unsupported_reason(v, XLA) is None
    assert xla_cpu.unsupported_reason(v, LoadOptions(backend="tpu")) is None
    assert xla_cpu.priority < 10  # below cpu's
    from llamahub import selection

    assert selection.choose(v, LoadOptions()).name == "cpu"


def test_device_tpu_needs_pjrt_tpu(xla_cpu: llamahub_tpu.TpuBackend) -> None:
    v = shipped().resolve("llama-debug-2-chat")
    why = xla_cpu.unsupported_reason(v, LoadOptions(device="tpu"))
    assert why is not None and "PJRT_DEVICE=CPU" in why and "device='xla'" in why
    assert "not on 'cuda'" in (xla_cpu.unsupported_reason(v, LoadOptions(device="cuda")) or "")


@pytest.mark.parametrize(("extra", "said"), [
    ({"devices": 4}, "SPMD shards across all 2 device(s)"),
    ({"devices": 0}, "whole number >= 1"),
    ({"tp": 2}, "no option tp (it takes devices)"),
])
def test_bad_options_are_refused(xla_cpu: llamahub_tpu.TpuBackend, extra: dict[str, int], said: str) -> None:
    v = shipped().resolve("llama-debug-2-chat")
    assert said in (xla_cpu.unsupported_reason(v, LoadOptions(device="xla", extra=extra)) or "")


def test_a_model_that_does_not_split_evenly_is_refused(xla_cpu: llamahub_tpu.TpuBackend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPU_NUM_DEVICES", "3")
    v = shipped().resolve("llama-debug-2-chat")  # 4 heads, dim 64
    why = xla_cpu.unsupported_reason(v, LoadOptions(device="xla", extra={"devices": 3})) or ""
    assert why.startswith("heads (4), kv heads (4)") and why.endswith("not divisible by devices=3")
    assert xla_cpu.unsupported_reason(v, LoadOptions(device="xla", extra={"devices": 1})) is None


def test_plan_is_per_device_and_shards_weights_and_cache(xla_cpu: llamahub_tpu.TpuBackend) -> None:
    v = shipped().resolve("llama-2-7b")
    one = xla_cpu.plan(v, LoadOptions(device="xla", extra={"devices": 1}))
    two = xla_cpu.plan(v, LoadOptions(device="xla"))  # default: every device (CPU_NUM_DEVICES=2)
    assert (one.devices, two.devices, one.device, one.dtype) == (1, 2, "xla:cpu", "bf16")
    weights_and_kv = one.device_bytes - llamahub_tpu.WORKING_BYTES
    assert weights_and_kv > v.param_count() * 2
    assert abs(two.device_bytes - llamahub_tpu.WORKING_BYTES - weights_and_kv / 2) <= 1
    fp32 = xla_cpu.plan(v, LoadOptions(device="xla", dtype="fp32", extra={"devices": 1}))
    assert fp32.device_bytes - llamahub_tpu.WORKING_BYTES == 2 * weights_and_kv
    cap = xla_cpu.capacity()  # XLA:CPU devices share the host's memory
    assert cap.devices == 2 and cap.device == "xla:cpu" and cap.device_bytes == cap.host_bytes // 2


@pytest.mark.xla
@pytest.mark.skipif(not HAS_XLA, reason="needs torch_xla (the XLA venv)")
def test_too_big_for_the_devices_is_refused_before_any_download(xla_cpu: llamahub_tpu.TpuBackend,
                                                                 llamahub_home: Path) -> None:
    with pytest.raises(NoBackendError) as e:
        llamahub.load("llama-2-70b", device="xla")
    said = str(e.value)
    assert "tpu" in said and "2 x" in said and "GiB xla:cpu" in said, said
    assert not (llamahub_home / "cache").exists() or not any((llamahub_home / "cache").rglob("*.pth"))
