"""The download engine against a real HTTP server with scripted faults."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultserver import FaultServer

from llamahub.client.download import DownloadOptions, RemoteFile, _hash_ahead, _Job, download
from llamahub.errors import ChecksumError, DiskSpaceError, DownloadError

FAST = DownloadOptions(workers=4, chunk_bytes=64 << 10, retries=3, backoff=0.01, progress=False)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    yield s
    s.close()


def _publish(server: FaultServer, path: str, size: int, seed: int = 0) -> RemoteFile:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = data[:size]
    server.files[path] = data
    return RemoteFile(path, server.url(path), size, hashlib.md5(data).hexdigest(),
                      hashlib.sha256(data).hexdigest())


def test_several_files_in_parallel_verify(server: FaultServer, tmp_path: Path) -> None:
    files = [_publish(server, f"f{i}.bin", 10_000 + i, seed=i) for i in range(5)]
    got = download(files, tmp_path, options=FAST)
    assert [g.file for g in got] == files
    for g, f in zip(got, files, strict=True):
        assert g.path.read_bytes() == server.files[f.path]
        assert g.sha256 == f.sha256 and g.size == f.size and g.resumed_from == 0


def test_large_file_comes_in_ranged_chunks(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "big.bin", 300_000)
    [got] = download([f], tmp_path, options=FAST)
    assert got.path.read_bytes() == server.files["big.bin"]
    assert sorted(server.ranges["big.bin"]) == sorted(
        f"bytes={s}-{min(s + (64 << 10), 300_000) - 1}" for s in range(0, 300_000, 64 << 10))
    assert not list(tmp_path.glob("*.json"))  # the chunk record is gone once verified


def test_truncated_transfer_resumes_where_it_stopped(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "small.bin", 50_000)
    server.faults["small.bin"].drop_after = [20_000]
    [got] = download([f], tmp_path, options=FAST)
    assert got.path.read_bytes() == server.files["small.bin"]
    assert server.ranges["small.bin"] == ["", "bytes=20000-"]
    assert server.served["small.bin"] == 50_000  # nothing fetched twice


def test_a_second_call_fetches_only_what_is_missing(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "small.bin", 50_000)
    (tmp_path / f"{f.sha256}.part").write_bytes(server.files["small.bin"][:30_000])  # an earlier run's
    [got] = download([f], tmp_path, options=FAST)
    assert got.resumed_from == 30_000
    assert server.ranges["small.bin"] == ["bytes=30000-"]
    assert got.path.read_bytes() == server.files["small.bin"]


def test_chunked_download_resumes_across_calls(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "big.bin", 300_000)  # five chunks of 64 KiB
    opts = DownloadOptions(workers=1, chunk_bytes=64 << 10, retries=0, backoff=0.01, progress=False)
    server.faults["big.bin"].status = [0, 0, 403]  # two chunks arrive, then the server refuses
    with pytest.raises(DownloadError, match="HTTP 403"):
        download([f], tmp_path, options=opts)
    server.ranges["big.bin"].clear()
    [got] = download([f], tmp_path, options=opts)
    assert got.path.read_bytes() == server.files["big.bin"]
    done = got.resumed_from // (64 << 10)
    assert done >= 2 and got.resumed_from == done * (64 << 10)
    assert len(server.ranges["big.bin"]) == 5 - done  # only the missing chunks
    assert "bytes=0-65535" not in server.ranges["big.bin"]


def test_5xx_is_retried(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "a.bin", 1000)
    server.faults["a.bin"].status = [503, 502]
    [got] = download([f], tmp_path, options=FAST)
    assert server.requests["a.bin"] == 3 and got.sha256 == f.sha256


@pytest.mark.parametrize("status", [403, 404])
def test_4xx_fails_at_once_with_the_servers_words(server: FaultServer, tmp_path: Path, status: int) -> None:
    f = _publish(server, "a.bin", 1000)
    server.faults["a.bin"].status = [status]
    with pytest.raises(DownloadError, match=f"HTTP {status}: status {status} for a.bin") as e:
        download([f], tmp_path, options=FAST)
    assert e.value.hint == "ask the server's operator"
    assert server.requests["a.bin"] == 1


def test_retries_run_out(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "a.bin", 1000)
    server.faults["a.bin"].status = [500] * 10
    with pytest.raises(DownloadError, match="gave up after 4 attempts"):
        download([f], tmp_path, options=FAST)


def test_corrupted_once_is_fetched_again(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "a.bin", 5000)
    server.faults["a.bin"].corrupt = 1
    [got] = download([f], tmp_path, options=FAST)
    assert got.path.read_bytes() == server.files["a.bin"] and server.requests["a.bin"] == 2


def test_a_corrupted_chunk_is_caught_and_the_file_fetched_again(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "big.bin", 300_000)  # five chunks, hashed as they land
    server.faults["big.bin"].corrupt = 1
    [got] = download([f], tmp_path, options=FAST)
    assert got.path.read_bytes() == server.files["big.bin"] and got.sha256 == f.sha256
    assert server.requests["big.bin"] == 10


def test_chunks_are_hashed_in_file_order_as_they_land(tmp_path: Path) -> None:
    data = os.urandom(5 * 1000 + 123)
    part = tmp_path / "x.part"
    part.write_bytes(data)
    job = _Job(RemoteFile("x", "http://127.0.0.1:9/x", len(data)), part, len(data), ranges=True)
    opts = DownloadOptions(chunk_bytes=1000, progress=False)
    job.done_chunks = {0, 2000}
    _hash_ahead(job, opts)
    assert job.hashed == 1000  # the chunk at 1000 is not in yet
    job.done_chunks |= {1000, 3000, 5000}
    _hash_ahead(job, opts)
    assert job.hashed == 4000
    job.done_chunks.add(4000)
    _hash_ahead(job, opts)
    assert job.hashed == len(data) and job.hashers is not None
    assert job.hashers["sha256"].hexdigest() == hashlib.sha256(data).hexdigest()


def test_corrupted_always_is_refused_and_nothing_is_left(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "big.bin", 200_000)
    server.faults["big.bin"].corrupt = 100
    with pytest.raises(ChecksumError, match=r"big\.bin did not match"):
        download([f], tmp_path, options=FAST)
    assert list(tmp_path.iterdir()) == []


def test_md5_is_checked_when_it_is_the_only_digest(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "a.bin", 5000)
    meta_style = RemoteFile(f.path, f.url, md5="0" * 32)
    with pytest.raises(ChecksumError, match="md5"):
        download([meta_style], tmp_path, options=FAST)
    [got] = download([RemoteFile(f.path, f.url, md5=f.md5)], tmp_path, options=FAST)
    assert got.md5 == f.md5 and got.size == 5000  # size learned from HEAD


def test_server_ignoring_ranges_still_gives_the_right_bytes(server: FaultServer, tmp_path: Path) -> None:
    big = _publish(server, "big.bin", 200_000)
    small = _publish(server, "small.bin", 30_000, seed=1)
    server.faults["big.bin"].ignore_range = True
    server.faults["small.bin"].ignore_range = True
    (tmp_path / f"{small.sha256}.part").write_bytes(server.files["small.bin"][:10_000])
    got = download([big, small], tmp_path, options=FAST)
    assert [g.path.read_bytes() for g in got] == [server.files["big.bin"], server.files["small.bin"]]


def test_disk_space_is_checked_before_any_request(server: FaultServer, tmp_path: Path) -> None:
    f = _publish(server, "a.bin", 1000)
    huge = RemoteFile(f.path, f.url, size=1 << 50, sha256=f.sha256)
    with pytest.raises(DiskSpaceError, match=r"needs 1\.0 PiB") as e:
        download([huge], tmp_path, options=FAST)
    assert "LLAMAHUB_CACHE" in (e.value.hint or "")
    assert sum(server.requests.values()) == 0


def test_file_urls_are_copied_and_verified(tmp_path: Path) -> None:
    src = tmp_path / "src" / "a b.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(100_000))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    [got] = download([RemoteFile("a.bin", src.as_uri(), sha256=sha)], tmp_path / "stage", options=FAST)
    assert got.path.read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError):
        download([RemoteFile("a.bin", src.as_uri(), sha256="0" * 64)], tmp_path / "stage2", options=FAST)


def test_progress_off_prints_nothing(server: FaultServer, tmp_path: Path,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    download([_publish(server, "a.bin", 1000)], tmp_path, options=FAST)
    assert capfd.readouterr() == ("", "")


def test_progress_on_draws_a_bar(server: FaultServer, tmp_path: Path,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    opts = DownloadOptions(progress=True, backoff=0.01)
    download([_publish(server, "a.bin", 1000)], tmp_path, options=opts)
    assert "download" in capfd.readouterr().err


def test_ctrl_c_stops_every_transfer_and_the_next_call_resumes(server: FaultServer, tmp_path: Path) -> None:
    import signal
    import sys
    import threading
    import time

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from netproxy import ThrottledProxy

    size = 2 << 20  # eight chunks of 256 KiB, four workers, 200 KB/s each: about 2.6 s in all
    f = _publish(server, "big.bin", size)
    proxy = ThrottledProxy(int(f.url.split(":")[2].split("/")[0]), rate=200_000)
    slow = RemoteFile(f.path, f.url.replace(server.url(""), proxy.url + "/"), f.size, f.md5, f.sha256)
    opts = DownloadOptions(workers=4, chunk_bytes=256 << 10, retries=3, backoff=0.01, progress=False)
    threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            download([slow], tmp_path, options=opts)
        stopped = time.monotonic() - started
    finally:
        proxy.close()
    part = tmp_path / f"{f.sha256}.part"
    on_disk = part.stat().st_blocks * 512
    assert stopped < 1.6, f"took {stopped:.2f} s to stop"  # the signal came at 0.6 s
    assert on_disk < size // 2, f"{on_disk} bytes staged"  # the transfers did not run on
    record = json.loads(part.with_name(part.name + ".json").read_text())
    [got] = download([f], tmp_path, options=opts)
    assert got.path.read_bytes() == server.files["big.bin"]
    assert got.resumed_from == len(record["done"]) * (256 << 10)
