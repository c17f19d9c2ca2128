"""File serving through signed links: Range (206), HEAD, resume accounting, the cap and expiry (403)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hubtest import Hub, MakeUser, downloads, error_code, file_url, link_query, manifest

SHARD = "llama-debug-2-chat/consolidated.00.pth"


def full(url: str, path: str = SHARD) -> bytes:
    response = httpx.get(file_url(url, path))
    assert response.status_code == 200, response.text
    return response.content


def test_range_requests_answer_206(make_user: MakeUser) -> None:
    url = make_user().link(variant="llama-debug-2-chat")["url"]
    body = full(url)
    size = len(body)
    part = httpx.get(file_url(url, SHARD), headers={"Range": "bytes=100-299"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-299/{size}"
    assert part.content == body[100:300]
    tail = httpx.get(file_url(url, SHARD), headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == body[-50:]
    open_ended = httpx.get(file_url(url, SHARD), headers={"Range": f"bytes={size - 10}-"})
    assert open_ended.status_code == 206 and open_ended.content == body[-10:]
    past_end = httpx.get(file_url(url, SHARD), headers={"Range": f"bytes={size}-"})
    assert past_end.status_code == 416 and past_end.headers["content-range"] == f"bytes */{size}"


def test_head_gives_size_and_is_not_a_download(hub: Hub, make_user: MakeUser) -> None:
    url = make_user().link(variant="llama-debug-2-chat")["url"]
    head = httpx.head(file_url(url, SHARD))
    assert head.status_code == 200
    expected = next(f for f in manifest(hub, url)["files"] if f["path"] == SHARD)
    assert int(head.headers["content-length"]) == expected["size"]
    assert head.headers["accept-ranges"] == "bytes" and head.content == b""
    assert downloads(hub, url)[SHARD] == 0


def served(hub: Hub, url: str, path: str = SHARD) -> dict[str, int]:
    entry = next(f for f in manifest(hub, url)["files"] if f["path"] == path)
    return {"served": entry["bytes_served"], "left": entry["bytes_left"], "size": entry["size"]}


def test_the_cap_counts_bytes_resumes_and_parallel_ranges_included(hub: Hub, make_user: MakeUser) -> None:
    url = make_user().link(variant="llama-debug-2-chat", max_downloads=2)["url"]
    size = served(hub, url)["size"]
    probe = httpx.get(file_url(url, SHARD), headers={"Range": "bytes=0-0"})
    assert probe.status_code == 206 and len(probe.content) == 1
    assert served(hub, url) == {"served": 1, "left": 2 * size - 1, "size": size}  # a probe costs a byte
    quarter = size // 4
    spans = [(i * quarter, size - 1 if i == 3 else (i + 1) * quarter - 1) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:  # a parallel download, as the llamahub client makes one
        parts = list(pool.map(lambda s: httpx.get(file_url(url, SHARD),
                                                  headers={"Range": f"bytes={s[0]}-{s[1]}"}), spans))
    assert all(p.status_code == 206 for p in parts)
    body = b"".join(p.content for p in parts)
    assert len(body) == size and served(hub, url)["served"] == 1 + size
    half = httpx.get(file_url(url, SHARD), headers={"Range": f"bytes={size // 2}-"})
    assert half.status_code == 206 and half.content == body[size // 2:]
    left = served(hub, url)["left"]
    assert left == 2 * size - 1 - size - (size - size // 2)
    whole = httpx.get(file_url(url, SHARD))
    assert whole.status_code == 403 and error_code(whole) == "download_cap_reached"
    past = httpx.get(file_url(url, SHARD), headers={"Range": f"bytes=0-{left}"})  # one byte too many
    assert past.status_code == 403 and error_code(past) == "download_cap_reached"
    fits = httpx.get(file_url(url, SHARD), headers={"Range": f"bytes=1-{left - 1}"})
    assert fits.status_code == 206 and fits.content == body[1:left]
    assert served(hub, url)["left"] == 1
    assert httpx.get(file_url(url, SHARD), headers={"Range": "bytes=5-6"}).status_code == 403
    assert httpx.head(file_url(url, SHARD)).status_code == 200  # HEAD costs nothing


def test_an_abandoned_download_gives_back_what_it_did_not_send(hub: Hub, make_user: MakeUser) -> None:
    big = "llama-debug-big-25m/consolidated.00.pth"
    url = make_user().link(variant="llama-debug-big-25m", max_downloads=1)["url"]
    size = served(hub, url, big)["size"]
    assert size > 10 << 20
    with httpx.Client(timeout=30) as client, client.stream("GET", file_url(url, big)) as response:
        assert response.status_code == 200
        received = 0
        for chunk in response.iter_raw(1 << 16):
            received += len(chunk)
            if received >= 1 << 18:
                break
    deadline = time.monotonic() + 10
    while served(hub, url, big)["served"] >= size and time.monotonic() < deadline:
        time.sleep(0.05)
    counted = served(hub, url, big)["served"]
    assert received <= counted < size  # what was sent (received, or held by socket buffers)
    rest = httpx.get(file_url(url, big), headers={"Range": f"bytes={counted}-"})
    assert rest.status_code == 206 and len(rest.content) == size - counted  # the resume fits the cap


def test_download_cap_gives_403_with_a_clear_body(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    url = make_user().link(variant="llama-debug-2-chat")["url"]
    assert manifest(hub, url)["max_downloads"] == 5  # the default cap
    for _ in range(5):
        full(url, "LICENSE")
    over = httpx.get(file_url(url, "LICENSE"))
    assert over.status_code == 403
    error = over.json()["error"]
    assert error["code"] == "download_cap_reached" and "has 0 of its" in error["message"]
    assert "request a new link" in error["hint"]
    assert full(url, "USE_POLICY.md")  # the cap is per file
    if shutil.which("wget"):
        out = subprocess.run(["wget", "--continue", "-O", str(tmp_path / "LICENSE"),
                              file_url(url, "LICENSE")], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "403" in out.stderr


def test_expired_link_gives_403(hub: Hub, make_user: MakeUser) -> None:
    link = make_user().link(variant="llama-debug-2-chat", expires_in=1)
    time.sleep(max(0.0, link["expires_epoch"] - time.time()) + 0.2)
    expired = httpx.get(file_url(link["url"], "LICENSE"))
    assert expired.status_code == 403 and error_code(expired) == "link_expired"
    assert "llamahub link llama-debug" in expired.json()["error"]["hint"]
    gone = httpx.get(f"{hub.url}/api/links/manifest", params=link_query(link["url"]))
    assert gone.status_code == 403 and error_code(gone) == "link_expired"


def test_revoked_link_gives_403(make_user: MakeUser) -> None:
    account = make_user()
    link = account.link(variant="llama-debug-2-chat")
    assert httpx.get(file_url(link["url"], "LICENSE")).status_code == 200
    assert account.http.delete(f"/api/links/{link['link_id']}").status_code == 200
    revoked = httpx.get(file_url(link["url"], "LICENSE"))
    assert revoked.status_code == 403 and error_code(revoked) == "link_revoked"


def test_unsubstituted_star_and_unknown_file(make_user: MakeUser) -> None:
    url = make_user().link(variant="llama-debug-2-chat")["url"]
    star = httpx.get(url)
    assert star.status_code == 400 and error_code(star) == "unsubstituted_path"
    missing = httpx.get(file_url(url, "llama-debug-2-chat/consolidated.07.pth"))
    assert missing.status_code == 404 and error_code(missing) == "no_such_file"


@pytest.mark.parametrize("path", ["LICENSE", SHARD])
def test_served_bytes_match_the_manifest(hub: Hub, make_user: MakeUser, path: str) -> None:
    url = make_user().link(variant="llama-debug-2-chat")["url"]
    entry = next(f for f in manifest(hub, url)["files"] if f["path"] == path)
    response = httpx.get(file_url(url, path))
    assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
    assert response.headers["etag"] == f'"{entry["sha256"]}"'


def _evict(blob: Path) -> bool:
    """Drop a blob from the page cache; False where the file system cannot (tmpfs keeps it)."""
    from llamahub.hub.blobserve import _read_cached

    fd = os.open(blob, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        evicted = _read_cached(fd, 4096, 0) is None
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the probe may have started readahead
        return evicted
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="reads without waiting need Linux")
def test_blocks_are_read_on_the_loop_only_when_cached(hub: Hub, make_user: MakeUser) -> None:
    """A warm blob is read without waiting; a cold one goes to a worker thread, bytes intact."""
    from llamahub.hub.blobserve import _read_cached

    url = make_user().link(variant="llama-debug-2-chat")["url"]
    entry = next(f for f in manifest(hub, url)["files"] if f["path"] == SHARD)
    blob = hub.data / "blobs" / "sha256" / entry["sha256"][:2] / entry["sha256"][2:]
    warm = blob.read_bytes()
    fd = os.open(blob, os.O_RDONLY)
    try:
        assert bytes(_read_cached(fd, 1000, 10) or b"") == warm[10:1010]
    finally:
        os.close(fd)
    if not _evict(blob):
        pytest.skip("this file system keeps every page in memory")
    body = full(url)
    assert len(body) == entry["size"] and hashlib.sha256(body).hexdigest() == entry["sha256"]
