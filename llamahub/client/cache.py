"""The local cache of downloaded variants, keyed by variant and content hash.

Layout under the cache root (``LLAMAHUB_CACHE``, else the platform's cache dir)::

    blobs/<sha256>                     verified file contents, read-only, shared between variants
    variants/<variant>/<snapshot>/     the download laid out as Meta does (symlinks into blobs/)
    variants/<variant>/<snapshot>.json what was verified: each file's size, sha256, md5, mtime
    variants/<variant>/current         the snapshot id in use
    staging/<variant>/                 partial downloads (never loaded)
    locks/<variant>.lock               one process downloads a variant at a time

A snapshot id is the first 16 hex digits of the sha256 of its sorted ``path sha256`` lines, so
the same files give the same id wherever they came from. A file only enters ``blobs/`` after
its digests were checked. Loading re-checks each blob's size and mtime against the record (cheap);
a changed blob is re-hashed, and a mismatch is reported (``cache verify`` re-hashes everything).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamahub.errors import CacheError
from llamahub.fsutil import atomic_write


@dataclass(frozen=True)
class CachedFile:
    path: str
    size: int
    sha256: str
    md5: str | None
    mtime_ns: int


@dataclass(frozen=True)
class Snapshot:
    variant: str
    id: str
    root: Path
    files: tuple[CachedFile, ...]
    origin: dict[str, Any]
    created_at: str

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def folder_of(self, meta_folder: str, variant: str) -> Path:
        """The checkpoint folder inside the snapshot (Meta layout, or an HF folder under the name)."""
        for name in (meta_folder, variant):
            if (self.root / name).is_dir():
                return self.root / name
        return self.root


@dataclass(frozen=True)
class Problem:
    variant: str
    path: str
    sha256: str
    reason: str


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def snapshot_id(files: Iterable[tuple[str, str]]) -> str:
    lines = "".join(f"{path} {sha}\n" for path, sha in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    # --- paths -----------------------------------------------------------------------------------

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def variant_dir(self, variant: str) -> Path:
        return self.root / "variants" / variant

    def staging(self, variant: str) -> Path:
        path = self.root / "staging" / variant
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lock_path(self, variant: str) -> Path:
        return self.root / "locks" / f"{variant}.lock"

    # --- reading ---------------------------------------------------------------------------------

    def current(self, variant: str) -> Snapshot | None:
        ref = self.variant_dir(variant) / "current"
        if not ref.is_file():
            return None
        return self._read(variant, ref.read_text().strip())

    def _read(self, variant: str, snap_id: str) -> Snapshot | None:
        record = self.variant_dir(variant) / f"{snap_id}.json"
        if not record.is_file():
            return None
        data = json.loads(record.read_text())
        files = tuple(CachedFile(**f) for f in data["files"])
        return Snapshot(variant, snap_id, self.variant_dir(variant) / snap_id, files, data.get("origin", {}),
                        data.get("created_at", ""))

    def snapshots(self) -> list[Snapshot]:
        base = self.root / "variants"
        found = [self.current(d.name) for d in sorted(base.iterdir())] if base.is_dir() else []
        return [s for s in found if s is not None]

    def has_blob(self, sha256: str | None, size: int | None) -> bool:
        if not sha256:
            return False
        path = self.blob(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    # --- writing ---------------------------------------------------------------------------------

    def put_blob(self, staged: Path, sha256: str) -> Path:
        """Move a verified file into the blob store (or drop it if the blob is already there)."""
        target = self.blob(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.stat().st_size == staged.stat().st_size:
            staged.unlink()
        else:
            os.chmod(staged, 0o444)
            os.replace(staged, target)
        return target

    def add(self, variant: str, files: list[tuple[str, int, str, str | None]],
            origin: dict[str, Any]) -> Snapshot:
        """Record a snapshot of blobs already in the store: ``(path, size, sha256, md5)`` each."""
        snap_id = snapshot_id((path, sha) for path, _, sha, _ in files)
        folder = self.variant_dir(variant)
        root = folder / snap_id
        tmp_root = folder / f".{snap_id}.{os.getpid()}.tmp"
        shutil.rmtree(tmp_root, ignore_errors=True)
        cached = []
        for path, size, sha, md5 in files:
            blob = self.blob(sha)
            link = tmp_root / path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
            cached.append(CachedFile(path, size, sha, md5, blob.stat().st_mtime_ns))
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp_root, root)
        record = {"variant": variant, "id": snap_id, "created_at": _now(), "origin": origin,
                  "files": [vars(f) for f in cached]}
        atomic_write(folder / f"{snap_id}.json", json.dumps(record, indent=2))
        atomic_write(folder / "current", snap_id)
        snap = self._read(variant, snap_id)
        assert snap is not None
        return snap

    # --- checking --------------------------------------------------------------------------------

    def check(self, snap: Snapshot, *, full: bool = False) -> list[Problem]:
        """Problems with a snapshot's blobs. Quick: size and mtime, re-hashing only changed blobs."""
        problems = []
        for f in snap.files:
            reason = self._check_file(f, full)
            if reason:
                problems.append(Problem(snap.variant, f.path, f.sha256, reason))
        return problems

    def _check_file(self, f: CachedFile, full: bool) -> str | None:
        blob = self.blob(f.sha256)
        try:
            st = blob.stat()
        except FileNotFoundError:
            return "missing"
        if st.st_size != f.size:
            return f"size {st.st_size:,} instead of {f.size:,} bytes"
        if full or st.st_mtime_ns != f.mtime_ns:
            actual = sha256_file(blob)
            if actual != f.sha256:
                return f"sha256 {actual[:16]}… instead of {f.sha256[:16]}…"
        return None

    def discard(self, problems: Iterable[Problem]) -> None:
        """Delete the blobs of ``problems`` so that the next download fetches them again."""
        for p in problems:
            self.blob(p.sha256).unlink(missing_ok=True)

    def require_intact(self, snap: Snapshot) -> None:
        problems = self.check(snap)
        if problems:
            listing = "; ".join(f"{p.path}: {p.reason}" for p in problems[:3])
            raise CacheError(f"the cached copy of {snap.variant} is damaged ({listing})",
                             hint=f"run `llamahub cache verify` then `llamahub download {snap.variant}` "
                                  "online to fetch the damaged files again")

    # --- removing --------------------------------------------------------------------------------

    def remove(self, variant: str) -> int:
        """Delete a variant's snapshots and every blob no other variant uses; returns bytes freed."""
        folder = self.variant_dir(variant)
        mine = {f.sha256 for s in self._all_of(variant) for f in s.files}
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.root / "staging" / variant, ignore_errors=True)
        still = {f.sha256 for s in self.snapshots() for f in s.files}
        freed = 0
        for sha in mine - still:
            blob = self.blob(sha)
            if blob.is_file():
                freed += blob.stat().st_size
                blob.unlink()
        return freed

    def _all_of(self, variant: str) -> list[Snapshot]:
        folder = self.variant_dir(variant)
        ids = [p.stem for p in folder.glob("*.json")] if folder.is_dir() else []
        return [s for s in (self._read(variant, i) for i in ids) if s is not None]
