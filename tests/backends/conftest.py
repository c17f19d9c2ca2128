"""Fixtures of the cpu backend's kernel tests: the compiled kernels (skipped where they cannot be
built) and a thread count restored after the test."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from llamahub_cpu import kernels


@pytest.fixture(scope="module")
def ops() -> ModuleType:
    """The int8/int4 kernels (``csrc/qgemv.cpp``)."""
    built = kernels.qkernel()
    if isinstance(built, str):
        pytest.skip(f"quantized kernels unavailable: {built}")
    return built


@pytest.fixture(scope="module")
def gemv() -> ModuleType:
    """The fp32/bf16 decode kernel (``csrc/gemv.cpp``)."""
    built = kernels.kernel()
    if isinstance(built, str):
        pytest.skip(f"decode kernel unavailable: {built}")
    return built


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
