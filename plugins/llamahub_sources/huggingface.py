"""The ``huggingface`` source: a variant's HF repo through ``huggingface_hub``.

It maps our variant name to the real repo id (the registry's ``hf_repo``; a variant without one
is ``llamahub/<name>``, as a llamahub hub serves it) and runs ``snapshot_download`` into the
Hugging Face cache (``HF_HUB_CACHE``), with the user's HF token (``HF_TOKEN`` or ``hf auth
login``) and endpoint (``HF_ENDPOINT``, or the location given: huggingface.co, a mirror, a llamahub
hub). With ``HF_HUB_OFFLINE=1`` it reads that cache alone. Our license gates run before it is
asked (the core gates every source). The snapshot's files are then verified into our cache by
sha256 (an LFS file's ETag) like any source's files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamahub.errors import DownloadError, LicenseError, OfflineError
from llamahub.plugin import ConfigError, RemoteFile, SourcePlan

if TYPE_CHECKING:
    from llamahub.plugin import HubAccess, Variant

DEFAULT_ENDPOINT = "https://huggingface.co"
META_FOLDER = "original/*"  # Meta's layout inside an HF repo: not needed, the HF layout is fetched
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class GatedRepoAccessError(LicenseError):
    """The endpoint refused a gated repo: ask for access where it says."""

    code = "hf_gated_repo"


def repo_id(variant: Variant) -> str:
    return variant.hf_repo or f"llamahub/{variant.name}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class HuggingFaceSource:
    name = "huggingface"
    description = ("a Hugging Face endpoint (HF_ENDPOINT or --from URL: huggingface.co, a mirror, a llamahub "
                   "hub) through huggingface_hub, into the HF cache")
    needs_location = False
    default = False
    carries_grants = False

    @property
    def works_offline(self) -> bool:
        """With ``HF_HUB_OFFLINE=1`` it reads only the Hugging Face cache."""
        return _offline()

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        try:
            import huggingface_hub
        except ImportError as e:
            raise ConfigError("the huggingface source needs huggingface_hub",
                              hint="pip install 'llamahub[hf]'") from e
        endpoint = (location or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{endpoint!r} is not an http(s) URL of a Hugging Face endpoint",
                              hint="pass the endpoint's URL, e.g. http://HOST:PORT of a llamahub hub")
        repo = repo_id(variant)
        try:
            folder = Path(huggingface_hub.snapshot_download(
                repo, endpoint=endpoint, ignore_patterns=[META_FOLDER], local_files_only=_offline()))
        except Exception as e:  # huggingface_hub's errors, mapped to ours below
            raise _our_error(e, variant, repo, endpoint) from e
        files = tuple(_remote(variant, folder, path) for path in sorted(folder.rglob("*"))
                      if path.is_file() and not path.relative_to(folder).as_posix().startswith("original/"))
        if not files:
            raise DownloadError(f"{repo} at {endpoint} has no files", hint="check the repo id and endpoint")
        return SourcePlan(files, {"source": self.name, "endpoint": endpoint, "repo": repo,
                                  "commit": folder.name, "format": "hf"})


def _remote(variant: Variant, folder: Path, path: Path) -> RemoteFile:
    """A file of the snapshot; its blob's name is its sha256 when the endpoint sent one as ETag."""
    blob = path.resolve()
    sha256 = blob.name if _SHA256.match(blob.name) else None
    rel = path.relative_to(folder).as_posix()
    return RemoteFile(f"{variant.name}/{rel}", blob.as_uri(), blob.stat().st_size, sha256=sha256)


def _our_error(e: Exception, variant: Variant, repo: str, endpoint: str) -> Exception:
    from huggingface_hub import errors

    page = f"{endpoint}/{repo}"
    if isinstance(e, errors.GatedRepoError):
        said = _server_message(e)
        return GatedRepoAccessError(f"{repo} is gated at {endpoint} and this token may not download it"
                                    + (f": {said}" if said else ""),
                                    hint=f"ask for access at {page} (on a llamahub hub: accept the "
                                         f"{variant.license} license), and set HF_TOKEN to a token that "
                                         "has it")
    if isinstance(e, errors.RepositoryNotFoundError):
        return DownloadError(f"{endpoint} has no repo {repo} for {variant.name}",
                             hint="check HF_ENDPOINT; on a llamahub hub the operator imports the variant")
    if isinstance(e, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled) and _offline():
        return OfflineError(f"{repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                            hint=f"unset HF_HUB_OFFLINE and fetch it once (`hf download {repo}`)")
    return DownloadError(f"cannot fetch {repo} from {endpoint}: {e}",
                         hint="check HF_ENDPOINT, HF_TOKEN and the network, then try again")


def _server_message(e: Any) -> str:
    response = getattr(e, "response", None)
    return response.headers.get("X-Error-Message", "") if response is not None else ""
