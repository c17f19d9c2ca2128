"""A multi-threaded AVX2 matrix-vector kernel for decoding, compiled on first use.

Decoding one token is a chain of matrix-vector products that only stream weights. In this
torch build aten's GEMV uses one core (about half the machine's memory bandwidth) and its bf16
path is slower still; ``csrc/gemv.cpp`` splits the rows over torch's intra-op threads. The
kernel is compiled once per machine into llamahub's cache (about a minute, needs a C++
compiler and ninja); when that is impossible the backend says why and uses aten instead.
Set ``LLAMAHUB_CPU_KERNEL=0`` to turn it off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import platformdirs
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "gemv.cpp"
NAME = "llamahub_gemv"
_lock = threading.Lock()
_cache: dict[str, ModuleType | str] = {}


def _build_dir() -> Path:
    """One folder per torch version and kernel source, so a changed source is rebuilt."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return Path(platformdirs.user_cache_dir("llamahub")) / "kernels" / f"torch-{torch.__version__}-{digest}"


def _import_built(path: Path) -> ModuleType | None:
    """Import an already built kernel directly (skips the build system's checks at load)."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> ModuleType | str:
    if os.environ.get("LLAMAHUB_CPU_KERNEL", "1") == "0":
        return "turned off by LLAMAHUB_CPU_KERNEL=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"this CPU has no AVX2 (torch reports {capability})"
    build_dir = _build_dir()
    try:
        built = _import_built(build_dir / f"{NAME}.so")
    except ImportError:
        built = None
    if built is not None:
        return built
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    print("llamahub: compiling the CPU decode kernel (once per machine, about a minute)...",
          file=sys.stderr, flush=True)
    try:
        return load(name=NAME, sources=[str(SOURCE)], build_directory=str(build_dir),
                    extra_cflags=["-O3", "-mavx2", "-mfma"], verbose=False)
    except Exception as e:  # no compiler, no ninja, ...: run on aten instead
        return f"could not compile {SOURCE.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def kernel() -> ModuleType | str:
    """The compiled module, or the reason it is unavailable (compiled once per process)."""
    with _lock:
        if "gemv" not in _cache:
            _cache["gemv"] = _build()
            if isinstance(_cache["gemv"], str):
                log.warning("cpu decode kernel unavailable: %s", _cache["gemv"])
        return _cache["gemv"]


class DecodeLinear(nn.Module):
    """A bias-free linear layer that uses the kernel for single-token inputs.

    It holds the very same weight tensor as the layer it replaces (no copy); swapped in on
    the meta device, it receives its weight when the checkpoint is assigned.
    """

    def __init__(self, weight: torch.Tensor, gemv: ModuleType) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self._gemv = gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() != 1 or not self.weight.is_contiguous():
            return F.linear(x, self.weight)
        return self._gemv.gemv(x, self.weight)


def use_decode_kernel(model: nn.Module) -> str:
    """Swap every ``nn.Linear`` of ``model`` for ``DecodeLinear``; returns what is in use."""
    gemv = kernel()
    if isinstance(gemv, str):
        return f"aten ({gemv})"
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, DecodeLinear(child.weight, gemv))
    return "llamahub AVX2 GEMV"
