"""Where the CPU decode kernel is built: under llamahub's cache, following LLAMAHUB_CACHE and
LLAMAHUB_HOME, and never rebuilt once it is there. Real builds, loaded by real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from llamahub_cpu import kernels

SCRIPT = """
from llamahub_cpu.kernels import kernel
k = kernel()
print(k if isinstance(k, str) else k.__file__)
"""


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLAMAHUB_CPU_KERNEL_DIR", "LLAMAHUB_CACHE", "LLAMAHUB_HOME")}
    return env | values


def _load(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_build_folder_is_under_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMAHUB_CPU_KERNEL_DIR")
    monkeypatch.setenv("LLAMAHUB_HOME", str(tmp_path / "home"))
    folder = kernels._build_dir()
    assert folder.parent == tmp_path / "home" / "cache" / "kernels"
    assert folder.name.startswith(f"torch-{torch.__version__}-")
    monkeypatch.setenv("LLAMAHUB_CACHE", str(tmp_path / "elsewhere"))
    assert kernels._build_dir() == tmp_path / "elsewhere" / "kernels" / folder.name
    monkeypatch.setenv("LLAMAHUB_CPU_KERNEL_DIR", str(tmp_path / "shared"))
    assert kernels._build_dir() == tmp_path / "shared" / folder.name


def test_a_changed_header_of_the_source_builds_anew(tmp_path: Path) -> None:
    source, header, other = tmp_path / "k.cpp", tmp_path / "k.h", tmp_path / "unrelated.h"
    source.write_text('#include <vector>\n#include "k.h"\nint f() { return g(); }\n')
    header.write_text("inline int g() { return 1; }\n")
    other.write_text("// not included\n")
    before = kernels._build_dir(source, ["-O3"])
    other.write_text("// still not included\n")
    assert kernels._build_dir(source, ["-O3"]) == before
    header.write_text("inline int g() { return 2; }\n")
    assert kernels._build_dir(source, ["-O3"]) != before


def test_a_changed_header_of_a_header_builds_anew(tmp_path: Path) -> None:
    """gemv.cpp includes block.h, which includes qdot.h: a change two includes deep counts too."""
    source, outer, inner = tmp_path / "k.cpp", tmp_path / "outer.h", tmp_path / "inner.h"
    source.write_text('#include "outer.h"\nint f() { return g(); }\n')
    outer.write_text('#pragma once\n#include "inner.h"\ninline int g() { return h(); }\n')
    inner.write_text("#pragma once\ninline int h() { return 1; }\n")
    before = kernels._build_dir(source, ["-O3"])
    inner.write_text("#pragma once\ninline int h() { return 2; }\n")
    assert kernels._build_dir(source, ["-O3"]) != before
    assert kernels._own_headers(source) == [outer, inner]


def test_building_one_kernel_leaves_the_others_build_folder_alone(gemv: ModuleType) -> None:
    """torch's load() appends its flags to the lists it gets: the folder each kernel was built in
    must still be the one a fresh process computes, whichever kernel this process built first."""
    builds = ((kernels.qkernel, kernels.QSOURCE, kernels.QCFLAGS),
              (kernels.kernel, kernels.SOURCE, kernels.CFLAGS))
    for build, source, flags in builds:
        module = build()
        assert not isinstance(module, str), module
        assert Path(module.__file__).parent == kernels._build_dir(source, flags)


def test_a_kernel_already_in_the_cache_is_loaded_without_building(tmp_path: Path, gemv: ModuleType) -> None:
    built = Path(gemv.__file__ or "")
    cache = tmp_path / "cache"
    folder = cache / "kernels" / built.parent.name
    folder.mkdir(parents=True)
    shutil.copy2(built, folder / built.name)
    before = (folder / built.name).stat().st_mtime_ns
    done = _load(_env(LLAMAHUB_CACHE=str(cache)))
    assert done.stdout.strip() == str(folder / built.name)
    assert "compiling" not in done.stderr
    assert (folder / built.name).stat().st_mtime_ns == before
    assert sorted(p.name for p in folder.iterdir()) == [built.name]  # no build files were written


@pytest.mark.slow
def test_first_use_builds_into_the_cache_once(tmp_path: Path, gemv: ModuleType) -> None:
    """A fresh LLAMAHUB_HOME compiles the kernel into its cache (about a minute); the next process
    loads that build. A lock file that a killed compiler left behind does not stall it."""
    env = _env(LLAMAHUB_HOME=str(tmp_path / "home"))
    folder = tmp_path / "home" / "cache" / "kernels" / Path(gemv.__file__ or "").parent.name
    folder.mkdir(parents=True)
    (folder / "lock").write_text("")  # torch's build lock, as a compiler killed with -9 leaves it
    first = _load(env)
    assert "compiling the CPU decode kernel" in first.stderr
    so = Path(first.stdout.strip())
    assert so.is_file() and so.is_relative_to(tmp_path / "home" / "cache" / "kernels")
    mtime = so.stat().st_mtime_ns
    second = _load(env)
    assert second.stdout.strip() == str(so) and "compiling" not in second.stderr
    assert so.stat().st_mtime_ns == mtime
