"""The TPU backend: the reference transformer on an XLA device through torch_xla.

``load(name, device="xla")`` runs on whatever device ``PJRT_DEVICE`` names (``TPU`` on a TPU VM,
``CPU`` for XLA's CPU device, which is how it is tested); ``device="tpu"`` insists on a TPU.
With ``devices=N`` (CLI: ``-o devices=N``; default: every device of the runtime) the weights
are sharded across N devices with torch_xla SPMD along the tensor-parallel split.

The backend is used only when asked for (a ``device`` it names, or ``backend="tpu"``) and
ranks below the cpu backend, so it is never chosen by accident. Without torch_xla it says it is
unavailable and how to install it.

Importing this module is cheap: torch_xla is imported when a model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from llamahub.plugin import Capacity, LoadOptions, MemoryPlan, hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from llamahub.plugin import Artifacts, Backend, LlamaModel, Variant

DTYPES = ("bf16", "fp32")  # the first is the default: TPUs compute in bf16
BYTES = {"fp32": 4, "bf16": 2}
OPTIONS = ("devices",)
DEVICES = ("xla", "tpu")
INSTALL = ("pip install torch==2.9.0 'torch-xla[tpu]==2.9.0' (a venv of its own: torch_xla pins "
           "its torch; on a CPU machine plain torch-xla==2.9.0 and PJRT_DEVICE=CPU)")
# Per device: activations, the logits of a prefill bucket, XLA's scratch buffers.
WORKING_BYTES = 64 * 2**20
# The process on the host: interpreter, torch, torch_xla and its runtime.
HOST_BYTES = 600 * 2**20


def pjrt_device() -> str | None:
    """The PJRT device torch_xla will use: ``PJRT_DEVICE``, else TPU when libtpu is installed."""
    name = os.environ.get("PJRT_DEVICE", "").strip().upper()
    if name:
        return name
    return "TPU" if importlib.util.find_spec("libtpu") is not None else None


def device_label() -> str:
    """What ``model.info["device"]`` and the plan table call the device: ``tpu`` or ``xla:cpu``."""
    kind = pjrt_device() or "?"
    return "tpu" if kind == "TPU" else f"xla:{kind.lower()}"


def runtime_devices() -> int:
    """How many devices the runtime has. XLA:CPU: ``CPU_NUM_DEVICES`` (default 1), read without
    starting the runtime; other devices: asked of the runtime."""
    if pjrt_device() == "CPU":
        return max(1, int(os.environ.get("CPU_NUM_DEVICES", "1") or 1))
    import torch_xla.runtime as xr

    return xr.global_runtime_device_count()


def devices_of(options: LoadOptions) -> int:
    """Devices asked for (``devices=N``), else every device of the runtime."""
    asked = options.extra.get("devices")
    return int(asked) if asked is not None else runtime_devices()


def split_reason(variant: Variant, n: int) -> str | None:
    """Why ``variant`` cannot be sharded across ``n`` devices (None when it can)."""
    a = variant.arch
    sizes = {"heads": a.n_heads, "kv heads": a.kv_heads, "hidden dim": a.hidden_dim, "dim": a.dim,
             "vocabulary": a.vocab_size}
    bad = [f"{name} ({size})" for name, size in sizes.items() if size % n]
    return f"{', '.join(bad)} not divisible by devices={n}" if bad else None


class TpuBackend:
    name = "tpu"
    priority = 4  # below cpu: runs when asked for, never by accident
    description = "torch_xla on a TPU (PJRT_DEVICE=TPU) or XLA's CPU device; SPMD across devices"
    dtypes = DTYPES
    devices = DEVICES

    def unavailable_reason(self) -> str | None:
        try:
            if importlib.util.find_spec("torch_xla") is None:
                return f"torch_xla is not installed: {INSTALL}"
        except (ImportError, ValueError) as e:
            return f"torch_xla cannot be found ({e}): {INSTALL}"
        if pjrt_device() is None:
            return "no XLA device chosen: set PJRT_DEVICE=TPU on a TPU VM (PJRT_DEVICE=CPU: XLA's CPU device)"
        return None

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        if options.dtype is not None and options.dtype not in DTYPES:
            return f"dtype {options.dtype!r} not supported (use {' or '.join(DTYPES)})"
        unknown = sorted(set(options.extra) - set(OPTIONS))
        if unknown:
            return f"no option {', '.join(unknown)} (it takes {', '.join(OPTIONS)})"
        device = (options.device or "").split(":")[0]
        if device and device not in DEVICES:
            return f"runs on XLA devices (device='xla' or 'tpu'), not on {options.device!r}"
        if not device and options.backend != self.name:
            return "used only when asked: device='xla' (or 'tpu'), or backend='tpu'"
        if device == "tpu" and pjrt_device() != "TPU":
            return (f"device='tpu' but PJRT_DEVICE={pjrt_device()}: set PJRT_DEVICE=TPU on a TPU VM, "
                    "or ask for device='xla' to run on the device PJRT_DEVICE names")
        n = options.extra.get("devices", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"devices must be a whole number >= 1, got {n!r}"
        have = runtime_devices()
        if n > 1 and n != have:  # torch_xla's SPMD mesh spans every device of the runtime
            return (f"devices={n}: SPMD shards across all {have} device(s) of the runtime; pass "
                    f"devices={have} or devices=1 (XLA:CPU: CPU_NUM_DEVICES sets how many there are)")
        return split_reason(variant, devices_of(options))

    def plan(self, variant: Variant, options: LoadOptions) -> MemoryPlan:
        """Per device: its shard of the weights and of a fixed full-context KV cache (heads are
        sharded), plus working memory. The cache is the weights' dtype."""
        from llamahub.plugin import context_length

        dtype = options.dtype or DTYPES[0]
        n, a = devices_of(options), variant.arch
        kv = 2 * a.n_layers * a.kv_heads * a.head_dim * context_length(variant, options) * BYTES[dtype]
        per_device = -(-(variant.param_count() * BYTES[dtype] + kv) // n) + WORKING_BYTES
        return MemoryPlan(host_bytes=HOST_BYTES, device_bytes=per_device, devices=n,
                          device=device_label(), dtype=dtype)

    def capacity(self) -> Capacity:
        import psutil

        host = psutil.virtual_memory().available
        n = runtime_devices()
        if pjrt_device() == "CPU":  # XLA:CPU devices share the host's memory
            return Capacity(host_bytes=host, device_bytes=host // n, devices=n, device=device_label())
        from llamahub_tpu.device import free_device_bytes

        return Capacity(host_bytes=host, device_bytes=free_device_bytes(), devices=n,
                        device=device_label())

    def load(self, artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
        from llamahub_tpu.engine import load_xla_model

        why = split_reason(variant, devices_of(options))
        if why:
            from llamahub.plugin import ConfigError

            raise ConfigError(f"cannot shard {variant.name}: {why}",
                              hint="pass devices=N with an N that divides the heads and feature sizes")
        return load_xla_model(artifacts, variant, options, devices_of(options))


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(TpuBackend())
