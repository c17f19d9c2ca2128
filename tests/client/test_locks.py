"""The inter-process lock: exclusive across processes, waits and times out with a clear error,
and a killed holder never leaves it stuck. The other process is a real one holding the lock."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamahub.client.locks import file_lock
from llamahub.errors import LlamahubError

Holder = tuple[Path, "subprocess.Popen[str]"]

HOLDER = """
import sys, time
from pathlib import Path
from llamahub.client.locks import file_lock
with file_lock(Path(sys.argv[1]), what="the holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    """Another process holding the lock on ``locks/x.lock`` for up to 60 s."""
    path = tmp_path / "locks" / "x.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "60"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield path, proc
    proc.kill()
    proc.wait()


def test_waits_then_times_out_naming_what_and_the_lock_file(holder: Holder) -> None:
    path, _ = holder
    told: list[str] = []
    start = time.monotonic()
    with pytest.raises(LlamahubError) as err, \
            file_lock(path, timeout=0.5, what="llama-2-7b", waiting=told.append):
        pytest.fail("the lock was taken while another process held it")
    assert 0.4 < time.monotonic() - start < 5
    assert told == ["waiting for another llamahub process working on llama-2-7b"]
    assert "held the lock on llama-2-7b for over 0 s" in err.value.message
    assert str(path) in (err.value.hint or "")


def test_a_killed_holder_releases_the_lock(holder: Holder) -> None:
    path, proc = holder
    proc.kill()
    proc.wait()
    told: list[str] = []
    with file_lock(path, timeout=5, waiting=told.append):
        pass
    assert told == []


def test_a_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    path = tmp_path / "y.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        told: list[str] = []
        with file_lock(path, timeout=30, waiting=told.append):
            assert proc.poll() is not None or proc.wait(5) == 0  # the holder is done before we hold it
        assert len(told) == 1
    finally:
        proc.kill()
        proc.wait()


def test_uncontended_lock_is_immediate_and_reusable(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "z.lock"  # folders are created
    told: list[str] = []
    for _ in range(3):
        with file_lock(path, timeout=0.1, waiting=told.append):
            pass
    assert told == []
