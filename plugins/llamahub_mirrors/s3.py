"""The ``s3`` source: a mirror in an S3 bucket (AWS, or any S3-compatible store).

``s3://bucket/prefix`` names the download root. Credentials and the endpoint come from the
standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``/instance roles; ``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` for an S3-compatible store). Files are fetched by our download engine
through short-lived presigned URLs, so a mirror gets the same parallel ranged reads, resume,
retries and verification as the hub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llamahub.errors import AuthenticationError
from llamahub.plugin import ConfigError, DownloadError, SourcePlan
from llamahub_mirrors.common import URL_LIFETIME, Listed, plan, push_all, wanted

if TYPE_CHECKING:
    from llamahub.plugin import HubAccess, MirrorFile, Variant

MULTIPART_ABOVE = 64 * 2**20  # bytes; boto3 uploads bigger files in parallel parts


def parse(location: str) -> tuple[str, str]:
    """(bucket, prefix without a trailing slash) of ``s3://bucket/prefix``."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"not an S3 location: {location}", hint="write s3://BUCKET/PREFIX")
    return parts.netloc, parts.path.strip("/")


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise ConfigError("the s3 source needs boto3, which is not installed",
                          hint="pip install 'llamahub[s3]'") from e
    # a session of its own: boto3's default session is process-global and caches credentials
    session = boto3.session.Session()
    return session.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}))


def _failure(e: Exception, doing: str, where: str) -> Exception:
    """Our error for a boto3/botocore failure, saying what to do next."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return AuthenticationError(f"no AWS credentials for {where} ({doing})",
                                   hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                                        "or run `aws configure`")
    if isinstance(e, EndpointConnectionError):
        return DownloadError(f"cannot reach the S3 endpoint for {where}: {e}",
                             hint="check your network, or AWS_ENDPOINT_URL for an S3-compatible store")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return DownloadError(f"the bucket of {where} does not exist", hint="check the bucket name")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return AuthenticationError(f"S3 refused {doing} at {where} ({code})",
                                       hint="check the credentials and that they may read (or write) "
                                            "this bucket")
        return DownloadError(f"S3 answered {code or 'an error'} while {doing} at {where}: {e}",
                             hint="check the location and try again")
    return DownloadError(f"{doing} at {where} failed: {e}", hint="try again")


def _key(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix else path


class S3Source:
    name = "s3"
    description = "a mirror in an S3 bucket: s3://bucket/prefix (AWS credential chain, AWS_ENDPOINT_URL)"
    needs_location = True
    default = False
    works_offline = False
    carries_grants = False
    schemes = ("s3",)

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        from botocore.exceptions import BotoCoreError, ClientError

        if not location:
            raise ConfigError("the s3 source needs the mirror's location", hint="pass --from s3://BUCKET/PREFIX")
        bucket, prefix = parse(location)
        client = _client()
        try:
            listed = self._list(client, bucket, prefix)
            files = wanted(variant, listed, location)

            def url(path: str) -> str:
                return client.generate_presigned_url("get_object", ExpiresIn=URL_LIFETIME,
                                                     Params={"Bucket": bucket, "Key": _key(prefix, path)})

            def read(path: str) -> str | None:
                if path not in listed:
                    return None
                body = client.get_object(Bucket=bucket, Key=_key(prefix, path))["Body"]
                return body.read().decode("utf-8", "replace")

            return plan(variant, hub, files, url, read, {"source": self.name, "url": f"s3://{bucket}/{prefix}"})
        except (BotoCoreError, ClientError) as e:
            raise _failure(e, f"reading {variant.name}", location) from e

    @staticmethod
    def _list(client: Any, bucket: str, prefix: str) -> dict[str, Listed]:
        found: dict[str, Listed] = {}
        start = f"{prefix}/" if prefix else ""
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            for obj in page.get("Contents", []):
                path = obj["Key"][len(start):]
                found[path] = Listed(path, int(obj["Size"]))
        return found

    def push(self, files: list[MirrorFile], location: str, echo: Callable[[str], None]) -> int:
        """Upload ``files`` (and checklists the cache lacks) under ``location``; returns bytes sent."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = parse(location)
        client = _client()
        config = TransferConfig(multipart_threshold=MULTIPART_ABOVE, multipart_chunksize=MULTIPART_ABOVE,
                                max_concurrency=4)

        def upload(f: MirrorFile) -> None:
            client.upload_file(str(f.local), bucket, _key(prefix, f.path), Config=config)
            head = client.head_object(Bucket=bucket, Key=_key(prefix, f.path))
            etag = head.get("ETag", "").strip('"')  # a single-part upload's ETag is its md5
            if head["ContentLength"] != f.size or ("-" not in etag and etag and etag != f.md5):
                raise DownloadError(f"s3://{bucket}/{_key(prefix, f.path)} does not hold what was sent "
                                    f"({head['ContentLength']} bytes, ETag {etag})", hint="push again")

        def write(path: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=_key(prefix, path), Body=data)

        try:
            return push_all(files, upload, write, echo)
        except (BotoCoreError, ClientError) as e:
            raise _failure(e, "pushing", location) from e
