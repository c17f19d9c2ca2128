"""Content-addressed blob stores: the local folder ``DIR/blobs/sha256/ab/cdef...`` (the default)
and, by URL, an S3-compatible bucket (:mod:`llamahub.hub.blobs_s3`). Both keep the ``Blobs``
protocol below; the hub reads and writes blobs only through it.

The local folder:

Files enter by a streaming copy into a temporary file (hashing sha256 and md5 and counting bytes
on the way; md5 in a second thread, since hashlib releases the GIL, so the two hashes of a 13 GB
shard take the time of the slower one), fsync, and an atomic rename into place, so a blob path
either does not exist or holds exactly the bytes its name says. Lookups take a sha256 and never
return a path outside the store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from llamahub.hub.errors import BadRequestError, BlobStoreError, NotFoundError

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)  # the store cannot take more bytes


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    md5: str
    size: int
    created: bool  # False when the store already held these bytes


class Blobs(Protocol):
    """Where a hub keeps file contents, named by their sha256."""

    def ensure(self) -> None:
        """Make the store usable (folders, a reachable bucket); called when a hub opens."""

    def exists(self, sha256: str) -> bool: ...

    def read_bytes(self, sha256: str) -> bytes: ...

    def add_file(self, source: Path) -> BlobInfo:
        """Store ``source`` verified; returns its sha256, md5 and size."""

    def add_bytes(self, data: bytes) -> BlobInfo: ...

    def remove(self, sha256: str) -> None:
        """Delete a blob (the caller checks that nothing references it)."""

    def reader(self, sha256: str, start: int, length: int) -> AsyncIterator[bytes | memoryview]:
        """The bytes ``start..start+length`` of a blob in blocks; NotFoundError at once (not on the
        first block) when the store lacks it."""

    def work_dir(self) -> Path:
        """A local folder for temporary files of imports (conversions)."""


def open_blobs(data_dir: Path, url: str | None) -> Blobs:
    """The local folder in ``data_dir`` (``url`` empty), or ``s3://bucket[/prefix]``."""
    if not url:
        return BlobStore(data_dir)
    if url.startswith("s3://"):
        from llamahub.hub.blobs_s3 import S3Blobs

        return S3Blobs.from_url(url, Path(data_dir))
    raise BadRequestError(f"unknown blob store {url!r}", code="bad_blob_store",
                          hint="give s3://bucket/prefix, or nothing for the data dir's blobs/ folder")


class BlobStore:
    """Blobs named by their sha256 under ``root/blobs/sha256``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = (Path(data_dir) / "blobs").resolve()
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"

    def ensure(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """The file holding blob ``sha256``; NotFoundError for a bad name or a missing blob."""
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise NotFoundError(f"{sha256!r} is not a blob name", code="blob_not_found")
        path = (self.objects / sha256[:2] / sha256[2:]).resolve()
        if not path.is_relative_to(self.objects) or not path.is_file():
            raise NotFoundError(f"blob {sha256} is not in the store", code="blob_not_found",
                                hint="re-import the variant (`llamahub hub import`)")
        return path

    def exists(self, sha256: str) -> bool:
        try:
            self.path(sha256)
        except NotFoundError:
            return False
        return True

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def reader(self, sha256: str, start: int, length: int) -> AsyncIterator[bytes | memoryview]:
        from llamahub.hub.blobserve import read_blob

        return read_blob(self.path(sha256), start, length)

    def work_dir(self) -> Path:
        self.ensure()
        return self.tmp

    def add_file(self, source: Path) -> BlobInfo:
        """Copy ``source`` into the store; returns its sha256, md5 and size."""
        with Path(source).open("rb") as f:
            return self.add_stream(f)

    def add_bytes(self, data: bytes) -> BlobInfo:
        return self.add_stream(io.BytesIO(data))

    def add_stream(self, stream: BinaryIO) -> BlobInfo:
        try:
            return self._add_stream(stream)
        except OSError as exc:  # nothing half-written stays: the temporary file is gone
            if exc.errno not in _FULL:
                raise
            raise BlobStoreError(f"cannot store a blob in {self.root}: {exc.strerror or exc}",
                                 code="blob_store_full",
                                 hint="free space in the hub's data dir (or give it a bigger volume), then "
                                      "import again") from exc

    def _add_stream(self, stream: BinaryIO) -> BlobInfo:
        self.ensure()
        tmp = self.tmp / f"{secrets.token_hex(8)}.part"
        sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
        try:
            with tmp.open("xb") as out, ThreadPoolExecutor(1, thread_name_prefix="md5") as pool:
                while block := stream.read(CHUNK):
                    other = pool.submit(md5.update, block)
                    sha.update(block)
                    out.write(block)
                    size += len(block)
                    other.result()
                out.flush()
                os.fsync(out.fileno())
            digest = sha.hexdigest()
            final = self.objects / digest[:2] / digest[2:]
            if final.is_file():
                return BlobInfo(digest, md5.hexdigest(), size, created=False)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return BlobInfo(digest, md5.hexdigest(), size, created=True)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, sha256: str) -> None:
        """Delete a blob (the caller checks that nothing references it)."""
        with contextlib.suppress(NotFoundError):
            self.path(sha256).unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
