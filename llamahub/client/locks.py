"""An advisory inter-process file lock (``fcntl.flock``): released by the kernel if a holder dies."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llamahub.errors import LlamahubError


@contextmanager
def file_lock(path: Path, *, timeout: float = 3600.0, what: str = "this",
              waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    Another process holding it makes this wait (``waiting`` is told once) up to ``timeout``
    seconds. A process that is killed releases its locks, so a crash never leaves one stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LlamahubError(
                        f"another llamahub process has held the lock on {what} for over {timeout:.0f} s",
                        hint=f"wait for it to finish, or stop it; the lock file is {path}") from None
                if waiting and not told:
                    waiting(f"waiting for another llamahub process working on {what}")
                    told = True
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock
