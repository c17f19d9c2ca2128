"""The cache: content-addressed blobs, snapshots in Meta's layout, checks, removal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from llamahub.client.cache import Cache, snapshot_id
from llamahub.errors import CacheError


def _stage(tmp: Path, name: str, data: bytes) -> tuple[Path, str]:
    path = tmp / f"{name}.staged"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _add(cache: Cache, variant: str, files: dict[str, bytes], tmp: Path) -> None:
    entries = []
    for rel, data in files.items():
        staged, sha = _stage(tmp, rel.replace("/", "_"), data)
        cache.put_blob(staged, sha)
        entries.append((rel, len(data), sha, None))
    cache.add(variant, entries, {"source": "test"})


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def test_snapshot_is_a_meta_layout_of_verified_blobs(cache: Cache, tmp_path: Path) -> None:
    files = {"LICENSE": b"terms", "v/params.json": b"{}", "v/consolidated.00.pth": b"x" * 100}
    _add(cache, "v", files, tmp_path)
    snap = cache.current("v")
    assert snap is not None and snap.bytes == 107
    assert (snap.root / "v" / "consolidated.00.pth").read_bytes() == b"x" * 100
    assert (snap.root / "LICENSE").resolve() == cache.blob(hashlib.sha256(b"terms").hexdigest())
    assert snap.folder_of("v", "v") == snap.root / "v"
    assert cache.blob(hashlib.sha256(b"terms").hexdigest()).stat().st_mode & 0o222 == 0  # read-only
    assert cache.check(snap) == []


def test_snapshot_id_depends_only_on_content() -> None:
    a = snapshot_id([("b", "2"), ("a", "1")])
    assert a == snapshot_id([("a", "1"), ("b", "2")])
    assert a != snapshot_id([("a", "1"), ("b", "3")])


def test_damaged_blob_is_found_quickly_and_by_full_check(cache: Cache, tmp_path: Path) -> None:
    _add(cache, "v", {"v/a.pth": b"a" * 1000}, tmp_path)
    snap = cache.current("v")
    assert snap is not None
    blob = cache.blob(snap.files[0].sha256)
    os.chmod(blob, 0o644)
    with blob.open("r+b") as f:  # same size, new bytes: mtime changes, so the quick check re-hashes
        f.write(b"b")
    [problem] = cache.check(snap)
    assert problem.path == "v/a.pth" and "sha256" in problem.reason
    with pytest.raises(CacheError, match="damaged") as e:
        cache.require_intact(snap)
    assert "llamahub download v" in (e.value.hint or "")
    cache.discard([problem])
    assert cache.check(snap)[0].reason == "missing"


def test_full_check_catches_what_stat_cannot(cache: Cache, tmp_path: Path) -> None:
    _add(cache, "v", {"v/a.pth": b"a" * 1000}, tmp_path)
    snap = cache.current("v")
    assert snap is not None
    blob = cache.blob(snap.files[0].sha256)
    st = blob.stat()
    os.chmod(blob, 0o644)
    blob.write_bytes(b"c" * 1000)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from the quick check
    assert cache.check(snap) == []
    assert len(cache.check(snap, full=True)) == 1


def test_remove_keeps_blobs_other_variants_share(cache: Cache, tmp_path: Path) -> None:
    _add(cache, "one", {"LICENSE": b"shared", "one/w.pth": b"1" * 50}, tmp_path)
    _add(cache, "two", {"LICENSE": b"shared", "two/w.pth": b"2" * 70}, tmp_path)
    freed = cache.remove("one")
    assert freed == 50
    assert cache.current("one") is None
    two = cache.current("two")
    assert two is not None and cache.check(two) == []
    assert [s.variant for s in cache.snapshots()] == ["two"]


def test_put_blob_of_known_content_drops_the_copy(cache: Cache, tmp_path: Path) -> None:
    first, sha = _stage(tmp_path, "a", b"same")
    cache.put_blob(first, sha)
    second, _ = _stage(tmp_path, "b", b"same")
    assert cache.put_blob(second, sha) == cache.blob(sha)
    assert not second.exists()
