"""Atomic file writes: the one way llamahub replaces a file's contents.

A reader sees either the old file or the complete new one, never a half-written file. Each
write goes to a temp file of its own in the same folder (``.<name>.<random>.tmp``), so two
writers never share one, and then replaces the target with ``os.replace``. A failed write
leaves the target untouched and removes its temp file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: Path, *, mode: int | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write; on a clean exit it replaces ``path`` (created with its folder).

    ``mode`` sets exact permission bits (e.g. ``0o600`` for secrets, ignoring the umask); without
    it a new file gets the usual ``0o666`` less the umask. ``durable`` fsyncs the file and its
    folder so the new contents survive a power cut; a write that only saves redoable work (a
    resume hint, say) may skip that.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically; see :func:`atomic_open`."""
    with atomic_open(path, mode=mode, durable=durable) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
