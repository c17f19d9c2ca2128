"""Name → verified files in the cache: license gates, source, download engine, cache.

``ensure()`` is what ``llamahub.load(name)`` and ``llamahub download`` call. A cached snapshot
whose blobs are intact and whose license receipt verifies is used without any network call;
otherwise, online, the source plans the files, the download engine fetches what the cache lacks,
and the cache records the new snapshot. One process at a time works on a variant (file lock);
a second one waits and then finds the first one's snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llamahub import plugins
from llamahub.client.cache import Cache, Snapshot
from llamahub.client.session import Session
from llamahub.errors import ChecksumError, ConfigError, OfflineError
from llamahub.interfaces import Source
from llamahub.registry import Variant


@dataclass
class FetchReport:
    """What ``ensure`` did, step by step (seconds), for progress output and the benchmark."""

    snapshot: Snapshot | None = None
    cached: bool = False
    downloaded_bytes: int = 0  # what crossed the network this time
    resumed_bytes: int = 0  # what an earlier, interrupted run had already fetched
    reused_files: int = 0
    steps: dict[str, float] = field(default_factory=dict)

    def timed(self, step: str, started: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + time.perf_counter() - started


def default_source() -> Source:
    """The source that declares itself the default (our hub's, unless a plugin replaces it)."""
    found = plugins.sources()
    defaults = [s for s in found.values() if getattr(s, "default", False)]
    if len(defaults) != 1:
        named = ", ".join(sorted(s.name for s in defaults)) or "none"
        raise ConfigError(f"{len(defaults)} download sources claim to be the default ({named})",
                          hint="name one with source=... (--source), or uninstall a plugin; "
                               "`llamahub plugins` lists them")
    return defaults[0]


def source_for(location: str) -> Source | None:
    """The source that declares ``location``'s URL scheme (``s3://`` ...), if one does."""
    scheme = location.partition("://")[0].lower() if "://" in location else ""
    if not scheme:
        return None
    claiming = [s for s in plugins.sources().values() if scheme in getattr(s, "schemes", ())]
    return claiming[0] if len(claiming) == 1 else None


def pick_source(name: str | None, location: str | None) -> Source:
    """The source named, else the one for ``location``'s scheme, else the default."""
    if name is None:
        by_scheme = source_for(location) if location else None
        return by_scheme or default_source()
    found = plugins.sources()
    if name not in found:
        raise ConfigError(f"no download source named {name!r}",
                          hint=f"installed sources: {', '.join(sorted(found)) or 'none'}; "
                               "`llamahub plugins` shows why one is missing")
    source = found[name]
    if getattr(source, "needs_location", False) and not location:
        raise ConfigError(f"the {name} source needs to be told where to fetch from",
                          hint="pass the URL or folder (`--meta-url URL` / `--from PATH`)")
    return source


def ensure(variant: Variant, session: Session, *, source: str | None = None, location: str | None = None,
           progress: bool = True, force: bool = False, report: FetchReport | None = None,
           trust_unverified: bool = False) -> Snapshot:
    """The cached, verified snapshot of ``variant``; downloads it first if needed (and allowed).

    ``force`` fetches again even when an intact snapshot is cached. ``trust_unverified`` accepts
    files a source has no digest for (a mirror without checklists); the cache records them.
    """
    report = report or FetchReport()
    cache = Cache(session.cfg.cache)
    t = time.perf_counter()
    decision = session.gate(variant)
    report.timed("license gates", t)
    chosen = pick_source(source, location)
    if not decision.allowed:
        # Only a source that may carry a grant (the hub) can allow this: ask it, even for a
        # cached copy. Its link request refuses before any byte moves; cached blobs are reused.
        if not getattr(chosen, "carries_grants", False):
            decision.raise_if_denied()
        force = True
    snap = None if force else _usable(cache, variant, session, report)
    if snap is not None:
        return snap
    if session.cfg.offline and not getattr(chosen, "works_offline", False):
        raise OfflineError(f"{variant.name} is not in the cache and offline mode is on",
                           hint=f"unset LLAMAHUB_OFFLINE and run `llamahub download {variant.name}`, "
                                "or use a local copy (--from PATH)")
    from llamahub.client.locks import file_lock

    with file_lock(cache.lock_path(variant.name), what=variant.name, waiting=session.echo):
        snap = None if force else _usable(cache, variant, session, report)  # another process's work?
        if snap is not None:
            return snap
        return _download(variant, session, cache, chosen, location, progress, report, trust_unverified)


def _usable(cache: Cache, variant: Variant, session: Session, report: FetchReport) -> Snapshot | None:
    t = time.perf_counter()
    snap = cache.current(variant.name)
    if snap is None:
        return None
    problems = cache.check(snap)
    report.timed("cache check", t)
    if not problems:
        report.snapshot, report.cached = snap, True
        return snap
    if session.cfg.offline:
        cache.require_intact(snap)  # raises CacheError naming the damage
    for p in problems:
        session.echo(f"cached {p.path} of {variant.name} is damaged ({p.reason}); fetching it again")
    cache.discard(problems)
    return None


def _download(variant: Variant, session: Session, cache: Cache, source: Source, location: str | None,
              progress: bool, report: FetchReport, trust_unverified: bool) -> Snapshot:
    from llamahub.client.download import DownloadOptions, download

    t = time.perf_counter()
    plan = source.plan(variant, session.access(), location)
    report.timed("links and manifest", t)
    origin = dict(plan.origin)
    if plan.unverified:
        if not trust_unverified:
            shown = ", ".join(plan.unverified[:3]) + (" ..." if len(plan.unverified) > 3 else "")
            raise ChecksumError(f"the {source.name} source has no checksum for {len(plan.unverified)} "
                                f"file(s) of {variant.name} ({shown}): nothing would prove they are intact",
                                hint="log in to a hub that carries the variant (its manifest has sha256s), "
                                     "put Meta's checklist.chk files in the mirror, or pass "
                                     "--trust-unverified (trust_unverified=True) to accept them as they are")
        origin["unverified"] = list(plan.unverified)
    current = cache.current(variant.name)
    if current is not None:
        cache.discard(cache.check(current))  # a damaged blob is never reused
    wanted = [f for f in plan.files if not cache.has_blob(f.sha256, f.size)]
    report.reused_files = len(plan.files) - len(wanted)
    t = time.perf_counter()
    fetched = download(wanted, cache.staging(variant.name), options=DownloadOptions(progress=progress))
    report.timed("download and verify", t)
    t = time.perf_counter()
    digests = {}
    for item in fetched:
        cache.put_blob(item.path, item.sha256)
        # md5: ours when it was the digest checked, else the source's for this same content
        digests[item.file.path] = (item.size, item.sha256, item.md5 or item.file.md5)
        report.downloaded_bytes += item.size - item.resumed_from
        report.resumed_bytes += item.resumed_from
    for f in plan.files:
        if f.path not in digests:
            assert f.sha256 is not None and f.size is not None
            digests[f.path] = (f.size, f.sha256, f.md5)
    entries = [(path, size, sha, md5) for path, (size, sha, md5) in sorted(digests.items())]
    snap = cache.add(variant.name, entries, origin)
    report.timed("cache", t)
    report.snapshot = snap
    return snap
