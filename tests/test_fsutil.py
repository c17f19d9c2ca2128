"""The one atomic-write helper: all or nothing, no temp file left behind, exact modes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from llamahub.fsutil import atomic_open, atomic_write


def test_writes_bytes_and_text_and_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.json"
    assert atomic_write(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["file.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_open(target) as f:
        f.write(b"half of the new cont")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "new", 12345)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "public", "x", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "public").stat().st_mode & 0o777 == 0o644
    target = tmp_path / "secret"
    atomic_write(target, "x")
    target.chmod(0o644)
    atomic_write(target, "token", mode=0o600)  # replacing a readable file makes it owner-only
    assert target.stat().st_mode & 0o777 == 0o600


def test_default_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_concurrent_writers_never_mix_or_collide(tmp_path: Path) -> None:
    """Each writer has its own temp file: the result is one writer's whole payload."""
    target = tmp_path / "state.json"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(5):
                atomic_write(target, data, durable=False)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["state.json"]
