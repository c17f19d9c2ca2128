"""A real hub process whose blobs live in an S3 bucket (moto's server on 127.0.0.1): imports go to
the bucket and nothing to the data dir; signed links and the HF routes serve from it, byte for
byte and range by range; an object store that goes away mid-import leaves nothing served."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hubtest import NO_RATE_LIMITS, Hub, MakeUser, file_url, init_hub, manifest, run_cli, serving
from mirrorservers import s3_server
from netproxy import ThrottledProxy

from llamahub.model.writer import generate_checkpoint
from llamahub.registry import shipped

boto3 = pytest.importorskip("boto3")
BUCKET = "hub-blobs"


def _objects(client: object, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[dict[str, str], object]]:
    with s3_server() as server:
        env = server.env()
        client = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                                                aws_access_key_id="testing", aws_secret_access_key="testing",
                                                region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield env, client


@pytest.fixture(scope="module")
def hub(s3: tuple[dict[str, str], object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """Overrides tests/conftest.py's hub: the same, with its blobs in the bucket."""
    env, _ = s3
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**env, "LLAMAHUB_HUB_BLOBS": f"s3://{BUCKET}/hub"}.items():
            mp.setenv(key, value)
        data = tmp_path_factory.mktemp("s3-hub")
        token = init_hub(data)  # hub init + seed-demo, both to the bucket
        with serving(data, token, *NO_RATE_LIMITS) as (h, _):
            yield h


def test_blobs_go_to_the_bucket_and_are_served_from_it(hub: Hub, s3: tuple[dict[str, str], object],
                                                        make_user: MakeUser) -> None:
    _, client = s3
    local = hub.data / "blobs" / "sha256"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))
    keys = _objects(client, "hub/sha256/")
    assert keys
    link = make_user().link(family="llama-debug")["url"]
    files = manifest(hub, link)["files"]
    assert {f"hub/sha256/{f['sha256']}" for f in files} <= set(keys)
    for f in files:
        body = httpx.get(file_url(link, f["path"]), timeout=60)
        assert body.status_code == 200 and hashlib.sha256(body.content).hexdigest() == f["sha256"]
    big = max(files, key=lambda f: f["size"])
    whole = httpx.get(file_url(link, big["path"]), timeout=60).content
    part = httpx.get(file_url(link, big["path"]), headers={"Range": "bytes=100-4195"}, timeout=60)
    assert part.status_code == 206 and part.content == whole[100:4196]
    assert {f["path"]: f["bytes_served"] for f in manifest(hub, link)["files"]}[big["path"]] == \
        2 * big["size"] + 4096  # the cap counts bytes read from the bucket exactly as from disk


def test_the_hf_routes_serve_from_the_bucket(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    hf = pytest.importorskip("huggingface_hub")
    user = make_user()
    repo = "llamahub/llama-debug-2-chat"
    info = hf.HfApi(endpoint=hub.url).model_info(repo, token=user.token, files_metadata=True)
    config = next(s for s in info.siblings if s.rfilename == "config.json")
    path = hf.hf_hub_download(repo, "config.json", endpoint=hub.url, token=user.token,
                              cache_dir=tmp_path / "hf")
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == config.lfs.sha256


def test_a_store_gone_mid_import_leaves_nothing_served(hub: Hub, s3: tuple[dict[str, str], object],
                                                       tmp_path: Path, make_user: MakeUser,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env, _ = s3
    v = shipped().resolve("llama-debug-big-25m")
    generate_checkpoint(v, tmp_path / "src")
    port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = ThrottledProxy(port, rate=1e12, cut_after=8 << 20)  # the store goes away after 8 MB
    for key, value in {**env, "AWS_ENDPOINT_URL": proxy.url, "LLAMAHUB_HUB_BLOBS": f"s3://{BUCKET}/hub"}.items():
        monkeypatch.setenv(key, value)
    try:
        done = run_cli("hub", "import", str(tmp_path / "src"), "--variant", v.name, "--data", str(hub.data))
    finally:
        proxy.close()
    assert done.returncode != 0
    assert "unreachable" in done.stderr and "Traceback" not in done.stderr
    assert len(proxy.sent) > 8 << 20  # it did fail mid-way, not at the start
    refused = make_user().link(expect=404, variant=v.name)  # not imported: no link, nothing served
    assert refused["error"]["code"] == "variant_not_imported"
