"""The ``azure-blob`` source: a mirror in an Azure Blob Storage container.

Two ways to name it:

- ``az://ACCOUNT/CONTAINER/PREFIX`` with credentials from the environment, in this order:
  ``AZURE_STORAGE_CONNECTION_STRING`` (its ``BlobEndpoint`` is used, so it also points at Azurite),
  ``AZURE_STORAGE_KEY`` (the account key), else Azure's default credential chain
  (``azure-identity``: environment, managed identity, ``az login``) with a user delegation key.
- ``https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX?<SAS>``: a container URL with a SAS
  token that may list and read.

Either way each blob is fetched by our download engine through a short-lived signed URL.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from llamahub.errors import AuthenticationError
from llamahub.plugin import ConfigError, DownloadError, SourcePlan
from llamahub_mirrors.common import URL_LIFETIME, Listed, plan, push_all, wanted

if TYPE_CHECKING:
    from llamahub.plugin import HubAccess, MirrorFile, Variant


@dataclass(frozen=True)
class Where:
    """A parsed location: the container's client, the prefix, and how to sign a blob URL."""

    container: Any  # azure.storage.blob.ContainerClient
    prefix: str
    sign: Callable[[str], str]  # blob name -> a URL the engine can GET

    def blob(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path


def _sdk() -> Any:
    try:
        import azure.storage.blob as blob
    except ImportError as e:
        raise ConfigError("the azure-blob source needs azure-storage-blob, which is not installed",
                          hint="pip install 'llamahub[azure]'") from e
    return blob


def open_location(location: str) -> Where:
    parts = urlsplit(location)
    if parts.scheme == "az":
        container, _, prefix = parts.path.strip("/").partition("/")
        if not parts.netloc or not container:
            raise ConfigError(f"not an Azure location: {location}", hint="write az://ACCOUNT/CONTAINER/PREFIX")
        return _with_credentials(parts.netloc, container, prefix.strip("/"))
    if parts.scheme in ("https", "http") and parts.query:
        return _with_sas(location)
    raise ConfigError(f"not an Azure Blob location: {location}",
                      hint="write az://ACCOUNT/CONTAINER/PREFIX, or a container URL with a SAS token "
                           "(https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX?sv=...)")


def _with_sas(location: str) -> Where:
    blob = _sdk()
    parts = urlsplit(location)
    segments = parts.path.strip("/").split("/")
    # Azurite and other emulators put the account in the path: http://host:port/ACCOUNT/CONTAINER/...
    emulated = parts.hostname in ("127.0.0.1", "localhost") or not parts.hostname.endswith(".windows.net")
    skip = 2 if emulated else 1
    if len(segments) < skip:
        raise ConfigError(f"this URL names no container: {location}",
                          hint="use the container's URL with its SAS token")
    base = f"{parts.scheme}://{parts.netloc}/" + "/".join(segments[:skip])
    prefix = "/".join(segments[skip:])
    container = blob.ContainerClient.from_container_url(f"{base}?{parts.query}")
    return Where(container, prefix, lambda name: f"{base}/{quote(name)}?{parts.query}")


def _with_credentials(account: str, container_name: str, prefix: str) -> Where:
    blob = _sdk()
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    key = os.environ.get("AZURE_STORAGE_KEY")
    if conn:
        service = blob.BlobServiceClient.from_connection_string(conn)
    elif key:
        service = blob.BlobServiceClient(f"https://{account}.blob.core.windows.net",
                                         credential={"account_name": account, "account_key": key})
    else:
        service = blob.BlobServiceClient(f"https://{account}.blob.core.windows.net",
                                         credential=_default_chain())
    if service.account_name != account:
        raise ConfigError(f"AZURE_STORAGE_CONNECTION_STRING is for account {service.account_name}, "
                          f"not {account}", hint="use the connection string of the account you name")
    container = service.get_container_client(container_name)
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=URL_LIFETIME)
    read = blob.BlobSasPermissions(read=True)
    if conn or key:
        account_key = service.credential.account_key
        signer = {"account_key": account_key}
    else:
        signer = {"user_delegation_key": service.get_user_delegation_key(dt.datetime.now(dt.UTC), expiry)}

    def sign(name: str) -> str:
        sas = blob.generate_blob_sas(account, container_name, name, permission=read, expiry=expiry, **signer)
        return f"{container.url}/{quote(name)}?{sas}"

    return Where(container, prefix, sign)


def _default_chain() -> Any:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as e:
        raise AuthenticationError("no Azure credentials: neither AZURE_STORAGE_CONNECTION_STRING nor "
                                  "AZURE_STORAGE_KEY is set, and azure-identity is not installed",
                                  hint="set one of them, pass a container URL with a SAS token, or "
                                       "pip install azure-identity and run `az login`") from e
    return DefaultAzureCredential()


def _failure(e: Exception, doing: str, where: str) -> Exception:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(e, ClientAuthenticationError):
        return AuthenticationError(f"Azure refused the credentials while {doing} at {where}: {e.message}",
                                   hint="check the account key, connection string or SAS token")
    if isinstance(e, ServiceRequestError):
        return DownloadError(f"cannot reach Azure Blob Storage for {where}: {e}",
                             hint="check your network and the account name or endpoint")
    if isinstance(e, HttpResponseError):
        code = e.error_code or str(e.status_code)
        if code == "ContainerNotFound":
            return DownloadError(f"the container of {where} does not exist", hint="check the container name")
        if e.status_code in (401, 403):
            return AuthenticationError(f"Azure refused {doing} at {where} ({code})",
                                       hint="check the credentials, or that the SAS token may list and read")
        return DownloadError(f"Azure answered {code} while {doing} at {where}", hint="check the location")
    return DownloadError(f"{doing} at {where} failed: {e}", hint="try again")


class AzureBlobSource:
    name = "azure-blob"
    description = "a mirror in an Azure Blob container: az://account/container/prefix, or a SAS URL"
    needs_location = True
    default = False
    works_offline = False
    carries_grants = False
    schemes = ("az",)

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        from azure.core.exceptions import AzureError

        if not location:
            raise ConfigError("the azure-blob source needs the mirror's location",
                              hint="pass --from az://ACCOUNT/CONTAINER/PREFIX")
        where = open_location(location)
        try:
            listed = self._list(where)
            files = wanted(variant, listed, location.partition("?")[0])

            def read(path: str) -> str | None:
                if path not in listed:
                    return None
                data = where.container.download_blob(where.blob(path)).readall()
                return data.decode("utf-8", "replace")

            return plan(variant, hub, files, lambda p: where.sign(where.blob(p)), read,
                        {"source": self.name, "url": location.partition("?")[0]})
        except AzureError as e:
            raise _failure(e, f"reading {variant.name}", location.partition("?")[0]) from e

    @staticmethod
    def _list(where: Where) -> dict[str, Listed]:
        start = f"{where.prefix}/" if where.prefix else ""
        found = {}
        for item in where.container.list_blobs(name_starts_with=start or None):
            path = item.name[len(start):]
            found[path] = Listed(path, int(item.size))
        return found

    def push(self, files: list[MirrorFile], location: str, echo: Callable[[str], None]) -> int:
        """Upload ``files`` (and checklists the cache lacks) under ``location``; returns bytes sent."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError

        where = open_location(location)
        shown = location.partition("?")[0]

        def upload(f: MirrorFile) -> None:
            with f.local.open("rb") as data:
                where.container.upload_blob(where.blob(f.path), data, length=f.size, overwrite=True,
                                            max_concurrency=4)
            size = where.container.get_blob_client(where.blob(f.path)).get_blob_properties().size
            if size != f.size:
                raise DownloadError(f"{shown}/{f.path} holds {size} bytes after the upload, not {f.size}",
                                    hint="push again")

        def write(path: str, data: bytes) -> None:
            where.container.upload_blob(where.blob(path), data, overwrite=True)

        try:
            try:
                where.container.create_container()
            except ResourceExistsError:
                pass
            except HttpResponseError as e:
                if e.status_code != 403:  # a SAS token that may write blobs but not make containers
                    raise
            return push_all(files, upload, write, echo)
        except AzureError as e:
            raise _failure(e, "pushing", shown) from e
