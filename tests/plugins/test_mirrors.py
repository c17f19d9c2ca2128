"""The s3 and azure-blob sources against real servers on 127.0.0.1: moto's S3 server and Azurite.

Each source plans a mirror holding a Meta-layout download (the generated debug checkpoint with
its checklists); the real download engine fetches the planned signed URLs and verifies them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mirrorservers import AzureServer, S3Server, azure_server, s3_server

from llamahub.client.download import DownloadOptions, download
from llamahub.errors import AuthenticationError, ChecksumError, DownloadError, MissingShardError
from llamahub.registry import resolve
from llamahub.testing import FakeHub, check_source

VARIANT = "llama-debug-2-chat"
QUIET = DownloadOptions(progress=False)


@pytest.fixture(autouse=True)
def mirrors(plugin_manager: object) -> None:
    import llamahub_mirrors

    plugin_manager.register(llamahub_mirrors, name="mirrors")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- S3 (moto) --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def _s3_mirror(root: Path, skip: Callable[[str], bool] = lambda _p: False) -> tuple[str, object]:
    """A fresh bucket holding ``root`` under a prefix; returns (s3:// location, boto3 client)."""
    import boto3

    client = boto3.client("s3")
    bucket = f"mirror-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for path, data in _files(root).items():
        if not skip(path):
            client.put_object(Bucket=bucket, Key=f"llama/{path}", Body=data)
    return f"s3://{bucket}/llama", client


def test_s3_plan_is_verified_by_the_mirrors_checklists(s3_env: S3Server, debug_root: Path,
                                                       tmp_path: Path) -> None:
    from llamahub_mirrors import S3Source

    root = debug_root / VARIANT
    location, _ = _s3_mirror(root)
    plan = check_source(S3Source(), resolve(VARIANT), FakeHub(root, embedded=True), location)
    assert plan.unverified == ()
    assert plan.origin["verified_by"] == "mirror checklists (md5)"
    weights = [f for f in plan.files if f.path.endswith(".pth")]
    assert weights and all(f.md5 for f in weights)
    assert all(f.url.startswith(s3_env.endpoint) and "Signature=" in f.url for f in plan.files)

    fetched = download(list(plan.files), tmp_path / "staging", options=QUIET)
    local = _files(root)
    for item in fetched:
        assert item.path.read_bytes() == local[item.file.path]


def test_s3_tampered_object_is_refused(s3_env: S3Server, debug_root: Path, tmp_path: Path) -> None:
    from llamahub_mirrors import S3Source

    root = debug_root / VARIANT
    location, client = _s3_mirror(root)
    shard = f"{VARIANT}/consolidated.00.pth"
    data = bytearray((root / shard).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    bucket = location.split("/")[2]
    client.put_object(Bucket=bucket, Key=f"llama/{shard}", Body=bytes(data))
    plan = S3Source().plan(resolve(VARIANT), FakeHub(root, embedded=True), location)
    with pytest.raises(ChecksumError, match="md5"):
        download([f for f in plan.files if f.path == shard], tmp_path / "staging", options=QUIET)
    assert not list((tmp_path / "staging").glob("*.pth"))


def test_s3_prefers_the_hubs_sha256(s3_env: S3Server, debug_root: Path) -> None:
    from llamahub_mirrors import S3Source

    root = debug_root / VARIANT
    location, _ = _s3_mirror(root)
    hub = FakeHub(root)  # a hub the user logged in to: its manifest has sha256s
    plan = S3Source().plan(resolve(VARIANT), hub, location)
    assert hub.issued == [VARIANT]
    assert plan.origin["verified_by"] == "hub manifest (sha256)"
    assert all(f.sha256 for f in plan.files)


def test_s3_without_checklists_lists_what_is_unverified(s3_env: S3Server, debug_root: Path) -> None:
    from llamahub_mirrors import S3Source

    root = debug_root / VARIANT
    location, _ = _s3_mirror(root, skip=lambda p: p.endswith(".chk"))
    plan = S3Source().plan(resolve(VARIANT), FakeHub(root, embedded=True), location)
    assert plan.origin["verified_by"] == "nothing"
    assert f"{VARIANT}/consolidated.00.pth" in plan.unverified
    assert "LICENSE" not in plan.unverified  # documents are not loaded


def test_s3_errors_say_what_to_do(s3_env: S3Server, debug_root: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from llamahub_mirrors import S3Source

    root = debug_root / VARIANT
    hub = FakeHub(root, embedded=True)
    with pytest.raises(DownloadError, match="does not exist"):
        S3Source().plan(resolve(VARIANT), hub, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/llama")
    location, _ = _s3_mirror(root, skip=lambda p: p.endswith(".pth"))
    with pytest.raises(MissingShardError, match="mirror push"):
        S3Source().plan(resolve(VARIANT), hub, location)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AuthenticationError, match="no AWS credentials") as e:
        S3Source().plan(resolve(VARIANT), hub, location)
    assert "AWS_ACCESS_KEY_ID" in (e.value.hint or "")


# --- Azure Blob (Azurite) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureServer]:
    with azure_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


def _az_container(server: AzureServer, root: Path, skip: Callable[[str], bool] = lambda _p: False) -> object:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(server.connection_string())
    container = service.create_container(f"mirror-{uuid.uuid4().hex[:12]}")
    for path, data in _files(root).items():
        if not skip(path):
            container.upload_blob(f"llama/{path}", data)
    return container


def test_azure_plan_with_connection_string(azurite: AzureServer, debug_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from llamahub_mirrors import AzureBlobSource

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    root = debug_root / VARIANT
    container = _az_container(azurite, root)
    location = f"az://devstoreaccount1/{container.container_name}/llama"
    plan = check_source(AzureBlobSource(), resolve(VARIANT), FakeHub(root, embedded=True), location)
    assert plan.unverified == () and plan.origin["verified_by"] == "mirror checklists (md5)"
    assert all(f.url.startswith(azurite.endpoint) and "sig=" in f.url for f in plan.files)
    fetched = download(list(plan.files), tmp_path / "staging", options=QUIET)
    local = _files(root)
    assert all(item.path.read_bytes() == local[item.file.path] for item in fetched)


def test_azure_plan_with_a_sas_url(azurite: AzureServer, debug_root: Path, tmp_path: Path) -> None:
    import datetime as dt

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    from llamahub_mirrors import AzureBlobSource

    root = debug_root / VARIANT
    container = _az_container(azurite, root)
    sas = generate_container_sas("devstoreaccount1", container.container_name,
                                 account_key=container.credential.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    location = f"{azurite.endpoint}/{container.container_name}/llama?{sas}"
    plan = AzureBlobSource().plan(resolve(VARIANT), FakeHub(root, embedded=True), location)
    assert plan.unverified == ()
    fetched = download([f for f in plan.files if f.path.endswith(".pth")], tmp_path / "staging",
                       options=QUIET)
    assert fetched and all(item.md5 for item in fetched)


def test_azure_wrong_key_and_container(azurite: AzureServer, debug_root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from llamahub_mirrors import AzureBlobSource

    root = debug_root / VARIANT
    hub = FakeHub(root, embedded=True)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    with pytest.raises(DownloadError, match="does not exist"):
        AzureBlobSource().plan(resolve(VARIANT), hub, "az://devstoreaccount1/no-such-container/llama")
    container = _az_container(azurite, root)
    wrong = azurite.connection_string().replace("AccountKey=Eby8", "AccountKey=AAAA")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    with pytest.raises(AuthenticationError):
        AzureBlobSource().plan(resolve(VARIANT), hub, f"az://devstoreaccount1/{container.container_name}/llama")


def test_push_to_a_location_no_mirror_answers_names_the_ones_that_do() -> None:
    from llamahub.client.mirror import push
    from llamahub.client.session import Session
    from llamahub.errors import ConfigError

    with Session() as session, pytest.raises(ConfigError, match="cannot fill a mirror at gs://") as e:
        push(resolve(VARIANT), session, "gs://bucket/llama")
    assert "s3 (s3://)" in (e.value.hint or "") and "azure-blob (az://)" in (e.value.hint or "")
