"""The download engine: parallel, ranged, resumable, retried, verified.

``download(files, staging)`` fetches every file into ``staging/<key>.part`` (key: the expected
sha256, else a hash of the file's path, never of the URL: a resumed download usually comes with
a fresh signed link) and verifies it (size; sha256, or md5 when no sha256 is known). It returns
the verified part files; the caller (the cache) moves them into place. Nothing unverified leaves
the staging folder.

- Files larger than ``chunk_bytes`` whose server accepts ranges are fetched as parallel ranged
  chunks written in place (``os.pwrite``) and hashed in file order as they land;
  ``<key>.part.json`` records finished chunks, so a killed process resumes with only the missing
  ones. Smaller files stream sequentially and are hashed as they arrive; a rerun resumes with
  ``Range: bytes=N-``.
- 5xx, 429, connection errors, timeouts and bodies that end early are retried with exponential
  backoff; other 4xx answers fail at once with the server's message.
- A digest mismatch deletes the part and fetches the file once more from scratch; a second
  mismatch raises ChecksumError.
- ``file://`` URLs are copied with the same staging and verification.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx

from llamahub.client.progress import ByteBar
from llamahub.errors import ChecksumError, DiskSpaceError, DownloadError
from llamahub.interfaces import RemoteFile

BUFFER = 1 << 20
NETWORK_READ = 256 << 10  # bytes per socket read; see _larger_reads
SPACE_MARGIN = 64 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Fetched:
    file: RemoteFile
    path: Path
    size: int
    sha256: str
    md5: str | None
    resumed_from: int


def _default_workers() -> int:
    # Verified downloads are CPU-bound on fast links (HTTP parsing, sha256): more threads than
    # cores only contend; a few streams are enough to fill a real network link.
    return max(2, min(4, os.cpu_count() or 2))


@dataclass(frozen=True)
class DownloadOptions:
    workers: int = field(default_factory=_default_workers)
    chunk_bytes: int = 256 << 20
    retries: int = 5
    backoff: float = 0.25
    timeout: float = 60.0
    progress: bool = True


class _Retry(Exception):
    """A failure worth retrying (5xx, 429, a body that ended early)."""


@dataclass
class _Job:
    file: RemoteFile
    part: Path
    size: int | None
    ranges: bool
    resumed_from: int = 0
    done_chunks: set[int] = field(default_factory=set)
    digests: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # a chunked part's running digests, over its first ``hashed`` bytes (see _hash_ahead)
    hashers: dict[str, Any] | None = None
    hashed: int = 0
    hash_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sidecar(self) -> Path:
        return self.part.with_name(self.part.name + ".json")

    def chunked(self, chunk: int) -> bool:
        return self.ranges and self.size is not None and self.size > chunk and _is_http(self.file.url)


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _key(f: RemoteFile) -> str:
    return f.sha256 or hashlib.sha256(f.path.encode()).hexdigest()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


# --- entry point -----------------------------------------------------------------------------------


def download(files: Sequence[RemoteFile], staging: Path, *, options: DownloadOptions | None = None,
             client: httpx.Client | None = None) -> list[Fetched]:
    """Fetch and verify ``files`` into ``staging``; returns them in the same order."""
    opts = options or DownloadOptions()
    _larger_reads()
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    own = client is None
    http = client or httpx.Client(timeout=opts.timeout, follow_redirects=True,
                                  limits=httpx.Limits(max_connections=2 * opts.workers + 2))
    try:
        jobs = [_Job(f, staging / f"{_key(f)}.part", f.size, ranges=True) for f in files]
        _check_space(jobs, staging)
        for job in jobs:
            if job.size is None:
                _probe(http, job, opts)
        _check_space(jobs, staging)
        total = sum(j.size or 0 for j in jobs)
        with ByteBar(total, opts.progress, "download") as advance, ThreadPoolExecutor(opts.workers) as pool:
            results = _run(pool, http, jobs, opts, advance)
        return [results[id(j)] for j in jobs]
    finally:
        if own:
            http.close()


def _run(pool: ThreadPoolExecutor, http: httpx.Client, jobs: list[_Job], opts: DownloadOptions,
         advance: Callable[[int], None]) -> dict[int, Fetched]:
    results: dict[int, Fetched] = {}
    pending = jobs
    for attempt in (1, 2):
        _all(pool, [u for j in pending for u in _units(http, j, opts, advance)])
        checked = _all(pool, [lambda j=j, last=attempt == 2: (j, _verify(j, final=last)) for j in pending])
        redo = []
        for job, fetched in checked:
            if fetched is None:
                redo.append(job)
                advance(-(job.size or 0))
            else:
                results[id(job)] = fetched
        for job in redo:  # from scratch
            job.done_chunks, job.digests, job.resumed_from = set(), {}, 0
            job.hashers, job.hashed = None, 0
        pending = redo
        if not pending:
            break
    return results


def _all(pool: ThreadPoolExecutor, work: list[Callable[[], T]]) -> list[T]:
    """Run every callable; on the first error cancel the rest, wait for running ones, re-raise."""
    futures: list[Future[T]] = [pool.submit(w) for w in work]
    done, running = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in done if f.exception() is not None]
    if failed:
        for f in running:
            f.cancel()
        wait(running)
        raise failed[0].exception()  # type: ignore[misc]
    return [f.result() for f in futures]


# --- planning ---------------------------------------------------------------------------------------


def _on_disk(path: Path) -> int:
    """Bytes a part file really holds (a pre-sized chunked part is sparse until filled)."""
    if not path.exists():
        return 0
    st = path.stat()
    return min(st.st_size, st.st_blocks * 512)


def _check_space(jobs: list[_Job], staging: Path) -> None:
    need = sum(max(0, j.size - _on_disk(j.part)) for j in jobs if j.size is not None)
    free = shutil.disk_usage(staging).free
    if need + SPACE_MARGIN > free:
        raise DiskSpaceError(f"downloading needs {_human(need)} but only {_human(free)} is free in {staging}",
                             hint="free space, or point LLAMAHUB_CACHE at a bigger disk")


def _probe(http: httpx.Client, job: _Job, opts: DownloadOptions) -> None:
    """Learn a file's size (and whether ranges work) from a HEAD; failures leave it unknown."""
    if not _is_http(job.file.url):
        job.size = _local(job.file.url).stat().st_size
        return
    try:
        r = http.head(job.file.url)
    except httpx.HTTPError:
        job.ranges = False
        return
    if r.status_code < 400 and r.headers.get("content-length"):
        job.size = int(r.headers["content-length"])
    job.ranges = r.headers.get("accept-ranges", "").lower() == "bytes"


def _units(http: httpx.Client, job: _Job, opts: DownloadOptions,
           advance: Callable[[int], None]) -> list[Callable[[], None]]:
    if not job.chunked(opts.chunk_bytes):
        return [lambda: _retrying(lambda: _sequential(http, job, opts, advance), job, opts)]
    assert job.size is not None
    _open_chunked(job, opts)
    starts = range(0, job.size, opts.chunk_bytes)
    advance(sum(min(opts.chunk_bytes, job.size - s) for s in starts if s in job.done_chunks))
    return [lambda s=s: _retrying(lambda: _chunk(http, job, s, opts, advance), job, opts)
            for s in starts if s not in job.done_chunks]


def _open_chunked(job: _Job, opts: DownloadOptions) -> None:
    """Pre-size the part file and read which chunks an earlier run finished."""
    state: dict[str, Any] = {}
    if job.sidecar.is_file() and job.part.is_file():
        try:
            state = json.loads(job.sidecar.read_text())
        except ValueError:
            state = {}
    if state.get("size") == job.size and state.get("chunk") == opts.chunk_bytes:
        job.done_chunks = set(state.get("done", []))
    else:
        job.part.unlink(missing_ok=True)
    job.resumed_from = sum(min(opts.chunk_bytes, (job.size or 0) - s) for s in job.done_chunks)
    with job.part.open("ab") as f:
        f.truncate(job.size)
    _save_sidecar(job, opts)


def _save_sidecar(job: _Job, opts: DownloadOptions) -> None:
    tmp = job.sidecar.with_name(f"{job.sidecar.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"size": job.size, "chunk": opts.chunk_bytes, "done": sorted(job.done_chunks)}))
    os.replace(tmp, job.sidecar)


# --- transfers -------------------------------------------------------------------------------------


def _retrying(fn: Callable[[], None], job: _Job, opts: DownloadOptions) -> None:
    for attempt in range(opts.retries + 1):
        try:
            return fn()
        except (httpx.TransportError, _Retry) as e:
            if attempt == opts.retries:
                raise DownloadError(f"{job.file.path}: gave up after {opts.retries + 1} attempts: {e}",
                                    hint="check the connection and run the same command again: it resumes"
                                    ) from e
            time.sleep(min(8.0, opts.backoff * 2**attempt))


def _refuse(job: _Job, r: httpx.Response) -> None:
    """Raise for an error answer: retryable for 5xx/429, DownloadError at once for other 4xx."""
    if r.status_code >= 500 or r.status_code == 429:
        raise _Retry(f"HTTP {r.status_code}")
    r.read()
    try:
        error = r.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    hint = error.get("hint") if isinstance(error, dict) else None
    failure = DownloadError(f"{job.file.path}: HTTP {r.status_code}" + (f": {message}" if message else ""),
                            hint=hint or "request a new link (it may have expired) and run the command again")
    failure.code = (error.get("code") if isinstance(error, dict) else None) or failure.code
    raise failure


def _sequential(http: httpx.Client, job: _Job, opts: DownloadOptions, advance: Callable[[int], None]) -> None:
    """Stream the whole file (resuming from the part's length), hashing as bytes arrive."""
    have = job.part.stat().st_size if job.part.exists() else 0
    if job.size is not None and have > job.size:
        job.part.unlink()
        have = 0
    hashers = _hashers(job.file)
    if have:
        _hash_file(job.part, hashers, have)
    job.resumed_from = job.resumed_from or have
    advance(have)
    with _Stream(http, job, have) as (status, chunks):
        if status == 200 and have:  # the server ignored the Range: start over
            advance(-have)
            have, hashers = 0, _hashers(job.file)
        with job.part.open("r+b" if have else "wb") as out:
            out.seek(have)
            for data in chunks:
                out.write(data)
                for h in hashers.values():
                    h.update(data)
                advance(len(data))
                have += len(data)
    if job.size is not None and have < job.size:
        raise _Retry(f"the body ended after {have:,} of {job.size:,} bytes")
    job.digests = {name: h.hexdigest() for name, h in hashers.items()}


class _Stream:
    """(status, iterator of bytes) for a file from ``offset``: an HTTP GET with Range, or a local read."""

    def __init__(self, http: httpx.Client, job: _Job, offset: int) -> None:
        self.http, self.job, self.offset = http, job, offset
        self._cm: Any = None

    def __enter__(self) -> tuple[int, Iterator[bytes]]:
        url = self.job.file.url
        if not _is_http(url):
            self._cm = _local(url).open("rb")
            self._cm.seek(self.offset)
            return 206, iter(lambda: self._cm.read(BUFFER), b"")
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        self._cm = self.http.stream("GET", url, headers=headers)
        r = self._cm.__enter__()
        if r.status_code == 416 and self.offset and self.offset == self.job.size:
            return 206, iter(())
        if r.status_code >= 400:
            _refuse(self.job, r)
        return r.status_code, _body(r)

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc) if _is_http(self.job.file.url) else self._cm.close()


def _body(r: httpx.Response) -> Iterator[bytes]:
    try:
        yield from r.iter_raw()  # as the network delivers: a cut-off body keeps what arrived
    except httpx.RemoteProtocolError as e:  # the peer closed before the end: resume from here
        raise _Retry(str(e)) from e


def _chunk(http: httpx.Client, job: _Job, start: int, opts: DownloadOptions,
           advance: Callable[[int], None]) -> None:
    assert job.size is not None
    end = min(start + opts.chunk_bytes, job.size) - 1
    moved = 0
    try:
        with http.stream("GET", job.file.url, headers={"Range": f"bytes={start}-{end}"}) as r:
            if r.status_code >= 400:
                _refuse(job, r)
            skip = start if r.status_code == 200 else 0  # no ranges after all: read up to our slice
            fd = os.open(job.part, os.O_WRONLY)
            try:
                for data in _body(r):
                    if skip:
                        cut = min(skip, len(data))
                        data, skip = data[cut:], skip - cut
                    data = data[: end + 1 - start - moved]
                    if data:
                        os.pwrite(fd, data, start + moved)
                        moved += len(data)
                        advance(len(data))
                    if start + moved > end:
                        break
            finally:
                os.close(fd)
    except BaseException:
        advance(-moved)
        raise
    if start + moved <= end:
        advance(-moved)
        raise _Retry(f"chunk at {start:,} ended after {moved:,} bytes")
    with job.lock:
        job.done_chunks.add(start)
        _save_sidecar(job, opts)
    _hash_ahead(job, opts)


def _hash_ahead(job: _Job, opts: DownloadOptions) -> None:
    """Hash a chunked part's finished chunks in file order while they are still in the page cache.

    sha256 runs front to back, so a chunk can be hashed only once every chunk before it is in:
    the thread that finishes a chunk hashes as far as the finished run reaches. If another
    thread is already at it, that one carries on; whatever is left when the last chunk lands,
    _verify hashes. Without this a 13 GB shard would be read back from disk after downloading.
    """
    if not job.hash_lock.acquire(blocking=False):
        return
    try:
        if job.hashers is None:
            job.hashers, job.hashed = _hashers(job.file), 0
        while True:
            with job.lock:
                if job.hashed not in job.done_chunks:
                    return
            length = min(opts.chunk_bytes, (job.size or 0) - job.hashed)
            _hash_file(job.part, job.hashers, length, start=job.hashed)
            job.hashed += length
    finally:
        job.hash_lock.release()


# --- verification ---------------------------------------------------------------------------------


def _hashers(f: RemoteFile) -> dict[str, Any]:
    """sha256 always (the cache is keyed by it); md5 only when it is the one digest we can check."""
    out = {"sha256": hashlib.sha256()}
    if f.md5 and not f.sha256:
        out["md5"] = hashlib.md5()
    return out


def _hash_file(path: Path, hashers: dict[str, Any], limit: int | None = None, start: int = 0) -> None:
    left = limit if limit is not None else -1
    with path.open("rb", buffering=0) as f:
        f.seek(start)
        buf = bytearray(4 * BUFFER)
        view = memoryview(buf)
        while left != 0:
            n = f.readinto(buf if left < 0 or left >= len(buf) else view[:left])
            if not n:
                break
            for h in hashers.values():
                h.update(view[:n])
            left = left - n if left > 0 else left


def _verify(job: _Job, *, final: bool) -> Fetched | None:
    """The Fetched of a complete part whose digests match; None (part deleted) to fetch it again."""
    f = job.file
    if not job.digests:
        if job.hashers is None:  # nothing hashed ahead (or a file copied whole): from the start
            job.hashers, job.hashed = _hashers(f), 0
        _hash_file(job.part, job.hashers, start=job.hashed)
        job.digests = {name: h.hexdigest() for name, h in job.hashers.items()}
    size = job.part.stat().st_size
    wrong = []
    if f.size is not None and size != f.size:
        wrong.append(f"size {size:,} instead of {f.size:,}")
    if f.sha256 and job.digests["sha256"] != f.sha256:
        wrong.append(f"sha256 {job.digests['sha256']} instead of {f.sha256}")
    if f.md5 and "md5" in job.digests and job.digests["md5"] != f.md5.lower():
        wrong.append(f"md5 {job.digests['md5']} instead of {f.md5}")
    if not wrong:
        job.sidecar.unlink(missing_ok=True)
        return Fetched(f, job.part, size, job.digests["sha256"], job.digests.get("md5"), job.resumed_from)
    job.part.unlink(missing_ok=True)
    job.sidecar.unlink(missing_ok=True)
    if final:
        raise ChecksumError(f"{f.path} did not match its published digest twice: {'; '.join(wrong)}",
                            hint="the source serves damaged data: tell its operator, or try another source")
    return None


# --- plumbing ---------------------------------------------------------------------------------------


def _larger_reads() -> None:
    """Let httpx's HTTP/1.1 layer read 256 KiB per socket read instead of 64 KiB.

    httpcore offers no option for this; its class attribute is the knob. Each piece of a body is
    copied a few times on its way out of httpcore and h11, then written and hashed: 256 KiB
    pieces cost 4× fewer trips through Python than 64 KiB ones and still stay in a core's L2
    cache through all of that, which larger pieces do not (bench/results/download.md). It
    changes nothing but read sizes, for every httpx client in the process; if httpcore ever
    drops the attribute this does nothing.
    """
    try:
        from httpcore._sync.http11 import HTTP11Connection
    except ImportError:
        return
    if getattr(HTTP11Connection, "READ_NUM_BYTES", 0) < NETWORK_READ:
        HTTP11Connection.READ_NUM_BYTES = NETWORK_READ


def _local(url: str) -> Path:
    return Path(unquote(urlsplit(url).path)) if url.startswith("file://") else Path(url)
