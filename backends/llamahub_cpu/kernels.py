"""A multi-threaded AVX2 matrix-vector kernel for decoding, compiled on first use.

Decoding one token is a chain of matrix-vector products that only stream weights. In this
torch build aten's GEMV uses one core (about half the machine's memory bandwidth) and its bf16
path is slower still; ``csrc/gemv.cpp`` splits the rows over torch's intra-op threads. The
kernel is compiled once into llamahub's cache, ``<cache>/kernels`` (about a minute, needs a C++
compiler and ninja); when that is impossible the backend says why and uses aten instead.
Set ``LLAMAHUB_CPU_KERNEL=0`` to turn it off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from llamahub.plugin import cache_dir

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "gemv.cpp"
NAME = "llamahub_gemv"
# The int8/int4 kernels (csrc/qgemv.cpp); their AVX-512 loops are chosen at run time.
QSOURCE = Path(__file__).parent / "csrc" / "qgemv.cpp"
QNAME = "llamahub_qgemv"
KERNEL_DIR_ENV = "LLAMAHUB_CPU_KERNEL_DIR"
# -fopenmp: torch's at::parallel_for is OpenMP pragmas in a header; without the flag they are
# ignored and the kernel runs on one thread (measured: 7.6 → 17.4 GB/s fp32 with 2 threads).
# Tuples: torch's load() appends its own flags to the lists it is given, which would change the
# build folder's hash (below) for every later build in the process.
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp")
QCFLAGS = CFLAGS
LDFLAGS = ("-fopenmp",)
_lock = threading.Lock()
_cache: dict[str, ModuleType | str] = {}


def _build_dir(source: Path = SOURCE, cflags: Sequence[str] = CFLAGS) -> Path:
    """``<cache>/kernels/torch-<version>-<source hash>``: a changed source or torch is rebuilt.

    ``<cache>`` is llamahub's cache (``LLAMAHUB_CACHE``, else ``LLAMAHUB_HOME/cache``, else the
    platform's); ``LLAMAHUB_CPU_KERNEL_DIR`` names another folder for the builds (say, one shared
    by several caches).
    """
    with source.open("rb") as f:
        h = hashlib.file_digest(f, "sha256")
    for header in _own_headers(source):
        h.update(header.read_bytes())  # a changed header builds anew
    h.update(" ".join([*cflags, *LDFLAGS]).encode())  # new flags build anew
    digest = h.hexdigest()[:12]
    root = os.environ.get(KERNEL_DIR_ENV)
    base = Path(root).expanduser() if root else cache_dir() / "kernels"
    return base / f"torch-{torch.__version__}-{digest}"


def _own_headers(source: Path) -> list[Path]:
    """The ``#include "..."`` files of ``source``, and theirs, each once, in the order met."""
    found: list[Path] = []
    todo = [source]
    while todo:
        text = todo.pop(0).read_text()
        for name in re.findall(r'^#include "([^"]+)"', text, re.MULTILINE):
            path = source.parent / name
            if path not in found:
                found.append(path)
                todo.append(path)
    return found


def _import_built(path: Path) -> ModuleType | None:
    """Import an already built kernel directly (skips the build system's checks at load)."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str = NAME, source: Path = SOURCE, cflags: Sequence[str] = CFLAGS) -> ModuleType | str:
    if os.environ.get("LLAMAHUB_CPU_KERNEL", "1") == "0":
        return "turned off by LLAMAHUB_CPU_KERNEL=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"this CPU has no AVX2 (torch reports {capability})"
    build_dir = _build_dir(source, cflags)
    try:
        built = _import_built(build_dir / f"{name}.so")
    except ImportError:
        built = None
    if built is not None:
        return built
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch's own build lock is a plain file that a killed compiler leaves behind, and then every
    # later build waits for it forever. An flock dies with its process: whoever holds it is the
    # only builder, so a torch lock file found then is stale.
    with FileLock(build_dir / "llamahub-build.lock"):
        try:
            built = _import_built(build_dir / f"{name}.so")  # another process may have built it
        except ImportError:
            built = None
        if built is not None:
            return built
        (build_dir / "lock").unlink(missing_ok=True)
        return _compile(build_dir, name, source, cflags)


def _compile(build_dir: Path, name: str, source: Path, cflags: Sequence[str]) -> ModuleType | str:
    from torch.utils.cpp_extension import load

    print(f"llamahub: compiling the CPU decode kernel {source.name} into {build_dir} "
          "(once per cache, about a minute)", file=sys.stderr, flush=True)
    try:
        return load(name=name, sources=[str(source)], build_directory=str(build_dir),
                    extra_cflags=list(cflags), extra_ldflags=list(LDFLAGS), verbose=False)
    except Exception as e:  # no compiler, no ninja, ...: run on aten instead
        return f"could not compile {source.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _cached(name: str, source: Path, cflags: Sequence[str]) -> ModuleType | str:
    with _lock:
        if name not in _cache:
            _cache[name] = _build(name, source, cflags)
            if isinstance(_cache[name], str):
                log.warning("cpu kernel %s unavailable: %s", source.name, _cache[name])
        return _cache[name]


def kernel() -> ModuleType | str:
    """The compiled module, or the reason it is unavailable (compiled once per process)."""
    return _cached(NAME, SOURCE, CFLAGS)


def qkernel() -> ModuleType | str:
    """The int8/int4 kernels (``qgemv``, ``qgemm``, ``dequant``, ``isa``), or why not."""
    return _cached(QNAME, QSOURCE, QCFLAGS)


class DecodeLinear(nn.Module):
    """A bias-free linear layer that uses the kernel for 1 to ``gemv.max_rows`` (8) rows: a decode
    step, alone or batched by the server; longer inputs (prompts) go to aten's GEMM.

    It holds the very same weight tensor as the layer it replaces (no copy); swapped in on
    the meta device, it receives its weight when the checkpoint is assigned.
    """

    def __init__(self, weight: torch.Tensor, gemv: ModuleType) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self._gemv = gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not 1 <= x.shape[:-1].numel() <= self._gemv.max_rows or not self.weight.is_contiguous():
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
