"""The in-tree download sources: ``hub`` (default), ``meta-url``, ``local`` and ``huggingface``.

Registered through the ``llamahub`` entry-point group exactly as a third party's sources would be.
Each turns a variant into the list of files to fetch, with whatever sizes and digests it knows;
the download engine fetches and verifies, the cache keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from llamahub.plugin import (
    ChecksumError,
    ConfigError,
    DownloadError,
    MissingShardError,
    NotACheckpointError,
    RemoteFile,
    SourcePlan,
    hookimpl,
    parse_checklist,
)
from llamahub_sources.huggingface import HuggingFaceSource

if TYPE_CHECKING:
    from llamahub.plugin import HubAccess, Variant

OPTIONAL_LOCAL = ("LICENSE", "USE_POLICY.md")


def expand(link: str, path: str) -> str:
    """A signed link with its ``*`` replaced by ``path`` (the query string kept)."""
    base, sep, query = link.partition("?")
    if not base.endswith("*"):
        raise ConfigError(f"this URL has no '*' to replace with a file path: {base}",
                          hint="use the whole link as emailed/issued: it ends in /* before the '?'")
    return base[:-1] + quote(path) + sep + query


def _checklists(variant: Variant, read: Callable[[str], str | None]) -> dict[str, str]:
    md5s: dict[str, str] = {}
    for path in variant.meta_files():
        if path.endswith(".chk"):
            text = read(path)
            if text is None:
                continue
            try:
                md5s.update(parse_checklist(text, path.rpartition("/")[0] + "/" if "/" in path else ""))
            except ValueError as e:
                raise ChecksumError(f"{path} is not a checklist md5sum can read ({e})",
                                    hint="the download is damaged or the URL is not a Meta download; "
                                         "get a new link") from e
    return md5s


class HubSource:
    name = "hub"
    description = "a llamahub hub (LLAMAHUB_HUB_URL, else the embedded one): signed link + sha256 manifest"
    needs_location = False
    default = True
    works_offline = False
    carries_grants = True  # the hub knows the organisation's enterprise grants

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        hub.require_account()
        link = hub.issue_link(variant.name)
        manifest = hub.manifest(link["url"])
        files = tuple(RemoteFile(f["path"], expand(link["url"], f["path"]), f["size"], f["md5"], f["sha256"])
                      for f in manifest["files"])
        return SourcePlan(files, {"source": self.name, "hub": hub.url, "link_id": link["link_id"],
                                  "key_id": link["key_id"], "grants": link.get("grants", [])})


class MetaUrlSource:
    name = "meta-url"
    description = "a presigned URL with '*' as Meta emails it (md5s from checklist.chk)"
    needs_location = True
    default = False
    works_offline = False
    carries_grants = False

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        import httpx

        if not location:
            raise ConfigError("the meta-url source needs the URL", hint="pass --meta-url URL")
        expand(location, "")  # refuse a URL without '*' before any request

        def read(path: str) -> str | None:
            try:
                response = httpx.get(expand(location, path), timeout=60, follow_redirects=True)
            except httpx.HTTPError as e:
                raise DownloadError(f"cannot fetch {path} from the presigned URL: {e}",
                                    hint="check the URL and your network, then try again") from e
            if response.status_code == 404:
                return None
            if response.status_code >= 400:
                raise DownloadError(f"the presigned URL answered {response.status_code} for {path}: "
                                    f"{response.text[:300]}",
                                    hint="Meta's links expire after 24 hours and allow a few downloads "
                                         "per file: ask for a new one")
            return response.text

        md5s = _checklists(variant, read)
        files = tuple(RemoteFile(p, expand(location, p), md5=md5s.get(p)) for p in variant.meta_files())
        return SourcePlan(files, {"source": self.name, "url": location.partition("?")[0]})


class LocalSource:
    name = "local"
    description = "a folder on this machine (a Meta download root or model folder, an HF folder, file://)"
    needs_location = True
    default = False
    works_offline = True
    carries_grants = False

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        if not location:
            raise ConfigError("the local source needs a folder", hint="pass --from PATH")
        folder = Path(unquote(urlsplit(location).path) if location.startswith("file://") else location)
        folder = folder.expanduser().resolve()
        if not folder.is_dir():
            raise NotACheckpointError(f"{folder} is not a folder", hint="pass the download's folder")
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return self._hf(variant, folder)
        inside = (folder / variant.meta_folder).is_dir() or folder.name != variant.meta_folder
        root = folder if inside else folder.parent  # the download root, or its model folder
        return self._meta(variant, root)

    def _meta(self, variant: Variant, root: Path) -> SourcePlan:
        if not (root / variant.meta_folder).is_dir():
            raise NotACheckpointError(f"{root} holds no {variant.meta_folder}/ folder of Meta's layout",
                                      hint=f"pass the download root that contains {variant.meta_folder}/")
        missing = [p for p in variant.meta_files() if not (root / p).is_file() and p not in OPTIONAL_LOCAL]
        if missing:
            raise MissingShardError(f"{root} lacks {', '.join(missing)}",
                                    hint="download the missing files again (or pass the complete folder)")

        def read(path: str) -> str | None:
            return (root / path).read_text() if (root / path).is_file() else None

        md5s = _checklists(variant, read)
        files = tuple(RemoteFile(p, (root / p).as_uri(), (root / p).stat().st_size, md5s.get(p))
                      for p in variant.meta_files() if (root / p).is_file())
        return SourcePlan(files, {"source": self.name, "folder": str(root)})

    def _hf(self, variant: Variant, folder: Path) -> SourcePlan:
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        files = tuple(RemoteFile(f"{variant.name}/{p.name}", p.as_uri(), p.stat().st_size) for p in paths)
        return SourcePlan(files, {"source": self.name, "folder": str(folder), "format": "hf"})


@hookimpl
def register_sources(register: Callable[[Any], None]) -> None:
    register(HubSource())
    register(MetaUrlSource())
    register(LocalSource())
    register(HuggingFaceSource())
