"""An organisation's own mirror, as a user drives it: `llamahub mirror push` from the cache to a
real S3 server (moto) or Azure emulator (Azurite), then `llamahub download NAME --from s3://...`
on another machine's cache: gated like the hub, verified, resumable."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clienttest import Client, MakeClient
from mirrorservers import S3Server, azure_server, s3_server
from netproxy import ThrottledProxy

from llamahub.registry import resolve

VARIANT = "llama-debug-2-chat"
BIG = "llama-debug-big-25m"  # two shards of ~13 MB


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def _bucket(s3: S3Server) -> str:
    import boto3

    name = f"mirror-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", **_boto_args(s3)).create_bucket(Bucket=name)
    return name


def _boto_args(s3: S3Server) -> dict[str, str]:
    env = s3.env()
    return {"endpoint_url": env["AWS_ENDPOINT_URL"], "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _origin(client: Client, name: str) -> dict:
    listed = client.cli("cache", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    return next(s for s in json.loads(listed.stdout) if s["variant"] == name)["origin"]


def _snapshot(client: Client, name: str) -> str:
    listed = client.cli("cache", "ls", "--json")
    return next(s for s in json.loads(listed.stdout) if s["variant"] == name)["snapshot"]


def test_push_then_download_by_name_from_s3(make_client: MakeClient, s3: S3Server) -> None:
    location = f"s3://{_bucket(s3)}/llama"
    filler = make_client()
    pushed = filler.cli("mirror", "push", VARIANT, location, **s3.env())
    assert pushed.returncode == 0, pushed.stderr
    assert f"{VARIANT}/consolidated.00.pth" in pushed.stdout and "pushed to" in pushed.stdout

    reader = make_client()
    done = reader.cli("download", VARIANT, "--from", location, "--no-progress", **s3.env())
    assert done.returncode == 0, done.stderr
    origin = _origin(reader, VARIANT)
    assert origin["source"] == "s3" and origin["verified_by"] == "hub manifest (sha256)"
    assert reader.cli("cache", "verify", VARIANT).returncode == 0
    assert _snapshot(reader, VARIANT) == _snapshot(filler, VARIANT)  # the same sha256s, file by file
    # the first run with a fresh cache may compile the CPU kernel: a loaded machine needs the time
    run = reader.cli("run", VARIANT, "Hello", "-n", "4", "--seed", "0", timeout=600, LLAMAHUB_OFFLINE="1")
    assert run.returncode == 0, run.stderr


def test_the_mirror_does_not_lift_the_license_gate(make_client: MakeClient, s3: S3Server) -> None:
    location = f"s3://{_bucket(s3)}/llama"
    assert make_client().cli("mirror", "push", VARIANT, location, **s3.env()).returncode == 0
    port = int(s3.endpoint.rsplit(":", 1)[1])
    proxy = ThrottledProxy(port, rate=1e9)  # records every request that reaches the store
    try:
        stranger = make_client(accept=())
        refused = stranger.cli("download", VARIANT, "--from", location, "--no-progress",
                               **(s3.env() | {"AWS_ENDPOINT_URL": proxy.url}))
        assert refused.returncode == 1
        assert "license" in refused.stderr.lower() and "accept" in refused.stderr
        assert proxy.requests_text() == ""  # refused before any request to the mirror
    finally:
        proxy.close()


def test_unverified_files_need_trust(make_client: MakeClient, s3: S3Server) -> None:
    """A mirror without checklists, of a variant the user's hub does not carry: no digest anywhere."""
    import boto3

    name = "llama-debug-big-1g"  # registered, never imported into the test hub
    bucket = _bucket(s3)
    store = boto3.client("s3", **_boto_args(s3))
    for path in resolve(name).meta_files():
        if not path.endswith(".chk"):
            store.put_object(Bucket=bucket, Key=f"llama/{path}", Body=f"bytes of {path}".encode())
    client = make_client()
    location = f"s3://{bucket}/llama"
    refused = client.cli("download", name, "--from", location, "--no-progress", **s3.env())
    assert refused.returncode == 1
    assert "no checksum" in refused.stderr and "--trust-unverified" in refused.stderr
    assert not (client.cache / "variants" / name).exists()

    trusted = client.cli("download", name, "--from", location, "--no-progress", "--trust-unverified",
                         **s3.env())
    assert trusted.returncode == 0, trusted.stderr
    assert "UNVERIFIED" in trusted.stdout
    assert "UNVERIFIED" in client.cli("cache", "ls").stdout
    assert f"{name}/consolidated.00.pth" in _origin(client, name)["unverified"]
    # an unverified copy is never spread further
    again = client.cli("mirror", "push", name, f"s3://{_bucket(s3)}/copy", **s3.env())
    assert again.returncode == 1 and "nobody verified" in again.stderr


def _staged(client: Client, name: str) -> int:
    folder = client.cache / "staging" / name
    return sum(p.stat().st_size for p in folder.glob("*.part")) if folder.is_dir() else 0


def test_killed_mirror_download_resumes(make_client: MakeClient, s3: S3Server) -> None:
    location = f"s3://{_bucket(s3)}/llama"
    assert make_client().cli("mirror", "push", BIG, location, **s3.env()).returncode == 0
    client = make_client()
    port = int(s3.endpoint.rsplit(":", 1)[1])
    proxy = ThrottledProxy(port, rate=6e6)  # 6 MB/s per connection: the download is still running
    client.env.update(s3.env() | {"AWS_ENDPOINT_URL": proxy.url})
    try:
        proc = client.popen("download", BIG, "--from", location, "--no-progress")
        deadline = time.monotonic() + 60
        while _staged(client, BIG) < 4_000_000:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "download did not start"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (client.cache / "variants" / BIG).exists()  # nothing half-done is a snapshot
        before = len(proxy.requests_text())
        done = client.cli("download", BIG, "--from", location, "--no-progress")
        assert done.returncode == 0, done.stderr
        starts = [int(m) for m in re.findall(r"(?i)^range: bytes=(\d+)-", proxy.requests_text()[before:],
                                             flags=re.MULTILINE)]
        assert any(s > 0 for s in starts), "the second run did not resume with a Range request"
        assert client.cli("cache", "verify", BIG).returncode == 0
    finally:
        proxy.close()


def test_push_then_download_from_azurite(make_client: MakeClient, tmp_path: Path) -> None:
    with azure_server(tmp_path / "azurite") as server:
        env = {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string()}
        location = f"az://devstoreaccount1/mirror-{uuid.uuid4().hex[:8]}/llama"
        pushed = make_client().cli("mirror", "push", VARIANT, location, **env)
        assert pushed.returncode == 0, pushed.stderr
        reader = make_client()
        done = reader.cli("download", VARIANT, "--from", location, "--no-progress", **env)
        assert done.returncode == 0, done.stderr
        assert _origin(reader, VARIANT)["source"] == "azure-blob"
        assert _snapshot(reader, VARIANT) != ""
        assert reader.cli("cache", "verify", VARIANT).returncode == 0
