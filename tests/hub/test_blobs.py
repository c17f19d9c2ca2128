"""The hub's blob stores (llamahub/hub/blobs.py, blobs_s3.py) keep one contract: the local folder
and an S3 bucket on moto's real server (multipart uploads, Content-MD5, ranged reads)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mirrorservers import s3_server

from llamahub.hub import blobs_s3
from llamahub.hub.blobs import Blobs, open_blobs
from llamahub.hub.errors import BadRequestError, BlobStoreError, NotFoundError


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with s3_server() as server:
        yield server.env()


def _bucket(env: dict[str, str], name: str) -> None:
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=name)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Blobs:
    if request.param == "local":
        blobs = open_blobs(tmp_path, None)
    else:
        env = request.getfixturevalue("s3_env")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        bucket = f"hub-{tmp_path.name[-20:].lower().replace('_', '-')}"
        _bucket(env, bucket)
        monkeypatch.setattr(blobs_s3, "PART", 5 << 20)  # S3's smallest part: a 12 MB file has 3
        blobs = open_blobs(tmp_path, f"s3://{bucket}/hub-a")
    blobs.ensure()
    return blobs


def _read(blobs: Blobs, sha: str, start: int, length: int) -> bytes:
    async def collect() -> bytes:
        return b"".join([bytes(b) async for b in blobs.reader(sha, start, length)])

    return anyio.run(collect)


def test_files_and_bytes_round_trip_with_their_digests(store: Blobs, tmp_path: Path) -> None:
    data = os.urandom(12 << 20) + b"tail"  # more than two parts of 5 MiB
    source = tmp_path / "shard.pth"
    source.write_bytes(data)
    info = store.add_file(source)
    assert (info.sha256, info.md5, info.size, info.created) == (
        hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), len(data), True)
    assert store.add_file(source).created is False  # content-addressed: stored once
    assert store.exists(info.sha256)
    assert _read(store, info.sha256, 0, len(data)) == data
    assert _read(store, info.sha256, (5 << 20) - 3, 10) == data[(5 << 20) - 3:(5 << 20) + 7]  # across parts
    small = store.add_bytes(b'{"dim": 8}')
    assert store.read_bytes(small.sha256) == b'{"dim": 8}'
    store.remove(info.sha256)
    assert not store.exists(info.sha256)
    with pytest.raises(NotFoundError):
        store.reader(info.sha256, 0, 1)  # refused before the response starts
    with pytest.raises(NotFoundError):
        store.reader("../../etc/passwd", 0, 1)


def test_a_bucket_that_is_not_there_or_a_bad_url_is_refused(s3_env: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(BlobStoreError, match="no-such-bucket"):
        open_blobs(tmp_path, "s3://no-such-bucket/x").ensure()
    with pytest.raises(BadRequestError, match="unknown blob store"):
        open_blobs(tmp_path, "ftp://host/x")


def test_an_unreachable_store_says_so_and_leaves_no_object(s3_env: dict[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    _bucket(s3_env, "cut-off")
    monkeypatch.setattr(blobs_s3, "PART", 5 << 20)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 << 20))
    store = open_blobs(tmp_path, "s3://cut-off")
    store.ensure()
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(BlobStoreError, match="unreachable"):
        open_blobs(tmp_path, "s3://cut-off").add_file(source)
    assert not store.exists(sha)  # the first client still reaches the real store
