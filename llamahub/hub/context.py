"""What a running hub holds: its store, blobs, keys and settings; creating and opening a data dir.

A data dir holds ``hub.db`` (SQLite, unless a database URL is given), ``blobs/`` (unless a blob
store URL is given: ``s3://bucket/prefix``) and ``keys/`` (unless a keys folder is given: replicas
on several machines mount one, see :mod:`llamahub.hub.keys`).
``init_hub`` creates the first signing key and an admin token (printed once, stored hashed), under
the keys folder's lock: two replicas started at once initialise the hub once.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llamahub.hub.blobs import Blobs, open_blobs
from llamahub.hub.errors import ConflictError, NotInitialisedError
from llamahub.hub.keys import KeyRing, keys_lock
from llamahub.hub.links import DEFAULT_MAX_DOWNLOADS, DEFAULT_TTL
from llamahub.hub.ratelimit import Rate, RateLimiter
from llamahub.hub.store import Store
from llamahub.registry import Registry

DATA_ENV = "LLAMAHUB_HUB_DATA"


@dataclass
class HubContext:
    data_dir: Path
    store: Store
    blobs: Blobs
    keys: KeyRing
    public_url: str | None = None
    clock: Callable[[], float] = time.time
    link_ttl: int = DEFAULT_TTL
    max_downloads: int = DEFAULT_MAX_DOWNLOADS
    limiter: RateLimiter = field(default_factory=RateLimiter)
    _registry: Registry | None = field(default=None, repr=False)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from llamahub.plugins import catalogue

            self._registry = catalogue()  # shipped variants and plugins' alike
        return self._registry


def keys_folder(data_dir: Path, keys_dir: Path | None = None) -> Path:
    """The signing keys' folder: ``keys_dir`` if given, else ``data_dir/keys``."""
    if keys_dir:
        return Path(keys_dir).expanduser().resolve()
    return Path(data_dir).expanduser().resolve() / "keys"


def is_hub(data_dir: Path, database_url: str | None = None, keys_dir: Path | None = None) -> bool:
    """Whether ``hub init`` made ``data_dir`` (its database, or with an external one its keys)."""
    return keys_folder(data_dir, keys_dir).is_dir() if database_url else (data_dir / "hub.db").is_file()


def open_store(data_dir: Path, database_url: str | None = None, *, blobs_url: str | None = None,
               create: bool = False, keys_dir: Path | None = None) -> tuple[Store, Blobs, KeyRing]:
    """Open the store, blobs and key ring of the hub in ``data_dir``.

    Only ``create=True`` (``hub init``) makes a new one; otherwise a folder that is not a hub is
    refused and nothing is written to it (a mistyped ``--data`` must not leave a hub behind).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not create and not is_hub(data_dir, database_url, keys_dir):
        raise NotInitialisedError(f"{data_dir} is not a hub (no {'keys/' if database_url else 'hub.db'})",
                                  hint=f"check --data (or {DATA_ENV}); `llamahub hub init --data "
                                       f"{data_dir}` makes a new hub there")
    data_dir.mkdir(parents=True, exist_ok=True)
    if database_url is None and not (data_dir / "hub.db").exists():
        os.close(os.open(data_dir / "hub.db", os.O_WRONLY | os.O_CREAT, 0o600))  # owner-only, like keys
    store = Store(database_url) if database_url else Store.for_dir(data_dir)
    store.create_all()
    blobs = open_blobs(data_dir, blobs_url)
    try:
        blobs.ensure()
    except BaseException:
        store.close()
        raise
    return store, blobs, KeyRing(store, keys_folder(data_dir, keys_dir))


def init_hub(data_dir: Path, database_url: str | None = None,
             blobs_url: str | None = None, keys_dir: Path | None = None) -> tuple[str, str]:
    """Create the first signing key and an admin token; returns (key id, admin token)."""
    with keys_lock(keys_folder(data_dir, keys_dir)):
        return _init_locked(data_dir, database_url, blobs_url, keys_dir)


def _init_locked(data_dir: Path, database_url: str | None, blobs_url: str | None,
                 keys_dir: Path | None) -> tuple[str, str]:
    store, _, keys = open_store(data_dir, database_url, blobs_url=blobs_url, create=True, keys_dir=keys_dir)
    try:
        if store.signing_keys():
            raise ConflictError(f"the hub in {data_dir} is already initialised",
                                code="already_initialised",
                                hint="rotate keys with POST /api/admin/keys/rotate; start the server "
                                     "with `llamahub hub serve`")
        kid = keys.create("operator", lock=False)  # init holds the keys lock already
        token = store.create_admin_token("admin")
    finally:
        store.close()
    return kid, token


def open_context(data_dir: Path, *, database_url: str | None = None, blobs_url: str | None = None,
                 keys_dir: Path | None = None, public_url: str | None = None,
                 clock: Callable[[], float] = time.time, link_ttl: int = DEFAULT_TTL,
                 max_downloads: int = DEFAULT_MAX_DOWNLOADS,
                 rate_limits: Mapping[str, Rate | None] | None = None) -> HubContext:
    store, blobs, keys = open_store(data_dir, database_url, blobs_url=blobs_url, keys_dir=keys_dir)
    if not store.signing_keys():
        store.close()
        raise NotInitialisedError(f"the hub in {data_dir} has no signing key yet",
                                  hint=f"run `llamahub hub init --data {data_dir}` first")
    ctx = HubContext(Path(data_dir).resolve(), store, blobs, keys,
                     public_url=public_url.rstrip("/") if public_url else None, clock=clock,
                     link_ttl=link_ttl, max_downloads=max_downloads, limiter=RateLimiter(rate_limits))
    keys.signing_key()  # fail now, not on the first request, if the key file is unusable
    return ctx

