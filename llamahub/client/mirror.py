"""``llamahub mirror push``: copy a cached, verified variant into a mirror (S3, Azure, a plugin's).

The variant is fetched first if the cache lacks it (license gates as for any download); a
snapshot holding files nobody verified is never spread to a mirror. The source that answers the
location's scheme uploads the files in Meta's layout, with checklists, so that the mirror can be
verified by md5 even by a reader with no hub account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from llamahub import plugins
from llamahub.client.fetch import ensure, pick_source
from llamahub.client.session import Session
from llamahub.errors import ChecksumError, ConfigError
from llamahub.interfaces import MirrorFile
from llamahub.registry import Variant


def push(variant: Variant, session: Session, location: str, *, source: str | None = None,
         echo: Callable[[str], None] = lambda _m: None, progress: bool = False) -> int:
    """Upload ``variant`` to the mirror at ``location``; returns the bytes sent."""
    target = _pusher(location, source)
    snap = ensure(variant, session, progress=progress)
    if snap.origin.get("unverified"):
        raise ChecksumError(f"the cached {variant.name} holds files nobody verified "
                            f"({', '.join(snap.origin['unverified'][:3])}): they are not pushed to a mirror",
                            hint=f"`llamahub cache rm {variant.name}` and download it from a verified source")
    files = []
    for f in snap.files:
        local = snap.root / f.path
        md5 = f.md5
        if md5 is None:
            with local.open("rb") as fh:
                md5 = hashlib.file_digest(fh, "md5").hexdigest()
        files.append(MirrorFile(f.path, local, f.size, md5, f.sha256))
    echo(f"pushing {variant.name} (snapshot {snap.id}, {len(files)} files) to {location.partition('?')[0]}")
    return target.push(files, location, echo)


def _pusher(location: str, name: str | None) -> Any:
    """The source to push to: one with a ``push`` method (an optional capability of ``Source``)."""
    chosen = pick_source(name, location)
    if not callable(getattr(chosen, "push", None)):
        able = sorted(f"{s.name} ({', '.join(f'{x}://' for x in getattr(s, 'schemes', ()))})"
                      for s in plugins.sources().values() if callable(getattr(s, "push", None)))
        raise ConfigError(f"the {chosen.name} source cannot fill a mirror at {location.partition('?')[0]}",
                          hint=f"mirrors you can push to: {', '.join(able) or 'none'}; or name one "
                               "with --source")
    return chosen
