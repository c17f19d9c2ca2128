"""What the S3 and Azure sources share: a mirror's listing becomes a verified ``SourcePlan``.

A mirror holds a download in Meta's layout under a prefix (``tokenizer.model`` and the
checklists at the top, ``<model>/consolidated.NN.pth`` below). The digests that prove a file
intact come, in this order, from the hub the user logged in to (its manifest has a sha256 per
file), from Meta's ``checklist.chk`` files in the mirror (md5, as Meta's own ``download.sh``
checks them), or from nowhere: then the files are listed as unverified and the core refuses
them unless the user trusts them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamahub.errors import AuthenticationError, HubError
from llamahub.plugin import ChecksumError, MissingShardError, RemoteFile, SourcePlan, parse_checklist

if TYPE_CHECKING:
    from llamahub.plugin import HubAccess, MirrorFile, Variant

# Documents that nothing loads and Meta's checklists do not cover: a mirror may lack them.
DOCUMENTS = ("LICENSE", "USE_POLICY.md")
# The hub's answers for a variant it does not carry: then the mirror's checklists decide.
NOT_ON_HUB = ("variant_not_imported", "unknown_variant", "unknown_family", "not_found")
URL_LIFETIME = 3600  # seconds a signed object URL stays valid; a resumed download plans anew


@dataclass(frozen=True)
class Listed:
    """One object found under the mirror's prefix: its path in Meta's layout and its size."""

    path: str
    size: int


def wanted(variant: Variant, listed: Mapping[str, Listed], where: str) -> list[Listed]:
    """The variant's files present in the mirror; refuses when a file that loads is missing."""
    # the checklists only add md5s: a mirror verified by the hub's manifest may lack them
    missing = [p for p in variant.meta_files()
               if p not in listed and p not in DOCUMENTS and not p.endswith(".chk")]
    if missing:
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise MissingShardError(f"the mirror at {where} lacks {len(missing)} file(s) of "
                                f"{variant.name}: {shown}",
                                hint=f"fill it with `llamahub mirror push {variant.name} {where}`, "
                                     "or check the bucket/container and prefix")
    return [listed[p] for p in variant.meta_files() if p in listed]


def hub_digests(variant: Variant, hub: HubAccess) -> dict[str, tuple[int, str]] | None:
    """{path: (size, sha256)} from the manifest of the hub the user logged in to, or None.

    The embedded hub carries only the debug variants, so it is not asked; neither is a hub the
    user has no account on. A hub that does not carry the variant answers None; a license
    refusal from it is raised (the mirror does not lift a gate).
    """
    if hub.embedded:
        return None
    try:
        hub.require_account()
        link = hub.issue_link(variant.name)
    except AuthenticationError:
        return None
    except HubError as e:
        if e.code in NOT_ON_HUB:
            return None
        raise
    manifest = hub.manifest(link["url"])
    return {f["path"]: (int(f["size"]), f["sha256"]) for f in manifest["files"] if f.get("sha256")}


def checklist_md5s(variant: Variant, read: Callable[[str], str | None]) -> dict[str, str]:
    """{path: md5} from the variant's Meta checklists found in the mirror."""
    md5s: dict[str, str] = {}
    for path in variant.meta_files():
        if not path.endswith(".chk"):
            continue
        text = read(path)
        if text is None:
            continue
        prefix = path.rpartition("/")[0] + "/" if "/" in path else ""
        try:
            md5s.update(parse_checklist(text, prefix))
        except ValueError as e:
            raise ChecksumError(f"{path} in the mirror is not a checklist md5sum can read ({e})",
                                hint="the mirror is damaged: push the variant to it again") from e
    return md5s


def plan(variant: Variant, hub: HubAccess, files: list[Listed], url: Callable[[str], str],
         read: Callable[[str], str | None], origin: dict[str, object]) -> SourcePlan:
    """The files to fetch with the best digests there are, and which have none."""
    sha = hub_digests(variant, hub)
    md5s = {} if sha else checklist_md5s(variant, read)
    # the checklists are where the md5s come from: md5sum cannot check a checklist against itself
    exempt = DOCUMENTS + (tuple(f.path for f in files if f.path.endswith(".chk")) if md5s else ())
    out, unverified = [], []
    for f in files:
        size_sha = sha.get(f.path) if sha else None
        remote = RemoteFile(f.path, url(f.path), f.size, md5=md5s.get(f.path),
                            sha256=size_sha[1] if size_sha else None)
        if remote.sha256 is None and remote.md5 is None and f.path not in exempt:
            unverified.append(f.path)
        out.append(remote)
    origin = {**origin, "verified_by": "hub manifest (sha256)" if sha else
              "mirror checklists (md5)" if md5s else "nothing"}
    return SourcePlan(tuple(out), origin, tuple(unverified))


def checklists_for(files: list[MirrorFile]) -> dict[str, str]:
    """Meta's checklist files for what is pushed when the cache lacks them: {path: text}.

    One ``checklist.chk`` per model folder (``md5  name`` lines) and ``tokenizer_checklist.chk``
    at the top for the tokenizer, as Meta lays them out.
    """
    present = {f.path for f in files}
    out: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.path.rpartition("/")
        if name.endswith(".chk") or name in DOCUMENTS:
            continue
        chk = f"{folder}/checklist.chk" if folder else "tokenizer_checklist.chk"
        if chk not in present:
            out.setdefault(chk, []).append(f"{f.md5}  {name}\n")
    return {path: "".join(sorted(lines, key=lambda line: line.split()[1])) for path, lines in out.items()}


def push_all(files: list[MirrorFile], upload: Callable[[MirrorFile], None],
             write: Callable[[str, bytes], None], echo: Callable[[str], None]) -> int:
    """Upload each file (``upload`` checks what landed), then the checklists the cache lacks;
    returns the bytes sent."""
    sent = 0
    for f in files:
        upload(f)
        sent += f.size
        echo(f"pushed {f.path} ({f.size:,} bytes)")
    for path, text in checklists_for(files).items():
        write(path, text.encode())
        echo(f"wrote {path}")
    return sent
