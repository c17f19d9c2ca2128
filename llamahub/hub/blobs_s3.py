"""Blobs in an S3-compatible bucket (AWS S3, MinIO, moto's server), through boto3.

Objects are ``PREFIX/sha256/<digest>``. A file is hashed first (sha256 names it, md5 is recorded),
then uploaded in parts of ``PART`` bytes, each sent with its Content-MD5 so that the store itself
refuses a part damaged on the way; the completed object's size is checked before the blob counts
as stored. A failed upload is aborted, so no half object is left under a blob's name. Downloads
are ranged GETs streamed through the hub, so the link's byte allowance is counted exactly as for
the local folder (a presigned redirect would hand the bytes out uncounted).

Credentials and endpoint come from boto3's usual chain (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
profiles, instance roles). Every store has its own boto3 session: the default one is process-global.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anyio

from llamahub.hub.blobs import BlobInfo
from llamahub.hub.errors import BadRequestError, BlobStoreError, HubError, NotFoundError

PART = 64 << 20  # multipart part size (S3's minimum is 5 MiB)
CHUNK = 1 << 20  # ranged GETs are streamed in blocks of this size
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


class S3Blobs:
    """Blobs under ``s3://bucket/prefix``; ``data_dir`` holds only temporary files of imports."""

    def __init__(self, bucket: str, prefix: str, data_dir: Path) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.data_dir = Path(data_dir)
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str, data_dir: Path) -> S3Blobs:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BadRequestError(f"{url!r} names no bucket", code="bad_blob_store",
                                  hint="give s3://bucket/prefix")
        return cls(bucket, prefix, data_dir)

    # --- plumbing ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise BlobStoreError("an s3:// blob store needs boto3", code="blob_store_unavailable",
                                           hint="pip install 'llamahub[s3]'") from exc
            config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                            read_timeout=60)
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _key(self, sha256: str) -> str:
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise NotFoundError(f"{sha256!r} is not a blob name", code="blob_not_found")
        return f"{self.prefix}/sha256/{sha256}" if self.prefix else f"sha256/{sha256}"

    def _call(self, fn: Callable[..., T], **kw: Any) -> T:
        """One S3 call; unreachable or refusing stores become BlobStoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound") and "Key" in kw:
                raise NotFoundError(f"blob {kw.get('Key')} is not in s3://{self.bucket}",
                                    code="blob_not_found",
                                    hint="re-import the variant (`llamahub hub import`)") from exc
            raise BlobStoreError(f"s3://{self.bucket} refused {fn.__name__}: {code or exc}"
                                       f"{' (no such bucket)' if code in ('404', 'NoSuchBucket') else ''}",
                                       code="blob_store_unavailable",
                                       hint="check the bucket, its permissions and the credentials") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"s3://{self.bucket} is unreachable: {exc}",
                                       code="blob_store_unavailable",
                                       hint="check AWS_ENDPOINT_URL and the network; retry later") from exc

    # --- the Blobs protocol --------------------------------------------------------------------

    def ensure(self) -> None:
        self._call(self.client.head_bucket)

    def work_dir(self) -> Path:
        work = self.data_dir / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        return work

    def size(self, sha256: str) -> int | None:
        try:
            return int(self._call(self.client.head_object, Key=self._key(sha256))["ContentLength"])
        except NotFoundError:
            return None

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None

    def read_bytes(self, sha256: str) -> bytes:
        return self._call(self.client.get_object, Key=self._key(sha256))["Body"].read()

    def add_bytes(self, data: bytes) -> BlobInfo:
        sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data)
        if self.size(sha) == len(data):
            return BlobInfo(sha, md5.hexdigest(), len(data), created=False)
        self._call(self.client.put_object, Key=self._key(sha), Body=data, ContentMD5=_b64(md5.digest()))
        return BlobInfo(sha, md5.hexdigest(), len(data), created=True)

    def add_file(self, source: Path) -> BlobInfo:
        sha, md5, size = _digests(Path(source))
        if self.size(sha) == size:
            return BlobInfo(sha, md5, size, created=False)
        if size <= PART:
            return self.add_bytes(Path(source).read_bytes())
        key = self._key(sha)
        upload = self._call(self.client.create_multipart_upload, Key=key)["UploadId"]
        try:
            parts = self._upload_parts(Path(source), key, upload)
            self._call(self.client.complete_multipart_upload, Key=key, UploadId=upload,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            # unreachable: the bucket's lifecycle rules drop incomplete uploads
            with contextlib.suppress(HubError):
                self._call(self.client.abort_multipart_upload, Key=key, UploadId=upload)
            raise
        stored = self.size(sha)
        if stored != size:
            raise BlobStoreError(f"s3://{self.bucket}/{key} holds {stored} bytes, not {size}",
                                       code="blob_store_unavailable", hint="import again")
        return BlobInfo(sha, md5, size, created=True)

    def _upload_parts(self, source: Path, key: str, upload: str) -> list[dict[str, Any]]:
        parts = []
        with source.open("rb") as f:
            for number, block in enumerate(_blocks(f, PART), 1):
                answer = self._call(self.client.upload_part, Key=key, UploadId=upload, PartNumber=number,
                                    Body=block, ContentMD5=_b64(hashlib.md5(block).digest()))
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
        return parts

    def remove(self, sha256: str) -> None:
        self._call(self.client.delete_object, Key=self._key(sha256))

    def reader(self, sha256: str, start: int, length: int) -> AsyncIterator[bytes | memoryview]:
        key = self._key(sha256)
        if self.size(sha256) is None:
            raise NotFoundError(f"blob {sha256} is not in s3://{self.bucket}", code="blob_not_found",
                                hint="re-import the variant (`llamahub hub import`)")
        return self._read(key, start, length)

    async def _read(self, key: str, start: int, length: int) -> AsyncIterator[bytes | memoryview]:
        if length <= 0:
            return
        answer = await anyio.to_thread.run_sync(
            lambda: self._call(self.client.get_object, Key=key, Range=f"bytes={start}-{start + length - 1}"))
        body, sent = answer["Body"], 0
        try:
            blocks = body.iter_chunks(CHUNK)
            while block := await anyio.to_thread.run_sync(next, blocks, b""):
                sent += len(block)
                yield block
        finally:
            body.close()
        if sent != length:
            raise BadRequestError(f"{key} gave {sent} of {length} bytes", code="blob_truncated")


def _digests(path: Path) -> tuple[str, str, int]:
    """sha256, md5 and size of a file in one read (md5 in a second thread)."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with path.open("rb") as f, ThreadPoolExecutor(1, thread_name_prefix="md5") as pool:
        for block in _blocks(f, CHUNK):
            other = pool.submit(md5.update, block)
            sha.update(block)
            size += len(block)
            other.result()
    return sha.hexdigest(), md5.hexdigest(), size


def _blocks(f: BinaryIO, n: int) -> Iterator[bytes]:
    while block := f.read(n):
        yield block


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
