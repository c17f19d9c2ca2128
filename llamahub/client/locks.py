"""An inter-process file lock (``filelock``): released by the OS if its holder dies; works on Windows too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from llamahub.errors import LlamahubError

POLL_SECONDS = 0.1


@contextmanager
def file_lock(path: Path, *, timeout: float = 3600.0, what: str = "this",
              waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    Another process holding it makes this wait (``waiting`` is told once) up to ``timeout``
    seconds. A process that is killed releases its locks, so a crash never leaves one stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, mode=0o644)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        if waiting:
            waiting(f"waiting for another llamahub process working on {what}")
        try:
            lock.acquire(timeout=timeout, poll_interval=POLL_SECONDS)
        except filelock.Timeout:
            raise LlamahubError(
                f"another llamahub process has held the lock on {what} for over {timeout:.0f} s",
                hint=f"wait for it to finish, or stop it; the lock file is {path}") from None
    try:
        yield
    finally:
        lock.release()
