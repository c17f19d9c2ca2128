"""The hub's signing keys: private keys as files (``<key id>.pem``, 0600), public keys in the database.

The newest key that is not revoked signs; every key that is not revoked verifies, so links issued
before a rotation keep working until their key is revoked. Revoking the last usable key creates a
new one, so the hub can always sign.

Replicas. Every hub process that serves the same database must see the same private keys: they
all read one keys folder (``--keys-dir``, default ``DATA/keys``): the data dir on one machine,
or the same folder mounted on every machine (a shared volume, or a secret volume mounted
read-only). Verifying needs only the database (public keys live there), so every replica
verifies what any other signed. A replica signs with the newest non-revoked key whose ``.pem`` it
can read, so a key rotated by another replica is used as soon as its file appears in the folder.

Creating a key writes its ``.pem`` first (atomically: a temporary file renamed into place), then
its database row, so no replica ever sees a key whose file is half-written. ``hub init``, rotation
and revocation take an inter-process lock (``.lock`` in the keys folder, ``filelock``), so two
replicas started at once never both initialise the hub. A read-only keys folder (the usual
mount for replicas) refuses rotation with 409 and says where to rotate instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from llamahub import crypto
from llamahub.hub.errors import ConflictError, NotFoundError, NotInitialisedError
from llamahub.hub.store import Store

LOCK_TIMEOUT = 60.0


class KeysReadOnlyError(ConflictError):
    code = "keys_read_only"

    def __init__(self, key_dir: Path, why: OSError) -> None:
        super().__init__(f"this hub cannot write a signing key to {key_dir} ({why.strerror or why})",
                         hint="rotate keys where the keys folder is writable: "
                              "`llamahub hub keys rotate --data DIR --keys-dir KEYS` (replicas that "
                              "mount it read-only use the new key once its file appears)")


@contextmanager
def keys_lock(key_dir: Path) -> Iterator[None]:
    """The keys folder's inter-process lock (one ``hub init``, rotation or revocation at a time)."""
    key_dir = Path(key_dir)
    try:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = filelock.FileLock(key_dir / ".lock", timeout=LOCK_TIMEOUT)
        lock.acquire()
    except filelock.Timeout as e:
        raise ConflictError(f"another process holds {key_dir / '.lock'}", code="keys_busy",
                            hint="another hub is creating or rotating a key; try again") from e
    except OSError as e:
        raise KeysReadOnlyError(key_dir, e) from e
    try:
        yield
    finally:
        lock.release()


class KeyRing:
    def __init__(self, store: Store, key_dir: Path) -> None:
        self.store = store
        self.key_dir = Path(key_dir)
        self._private: dict[str, crypto.Ed25519PrivateKey] = {}
        self._public: dict[str, crypto.Ed25519PublicKey] = {}
        self._lock = threading.Lock()

    def create(self, actor: str = "operator", *, lock: bool = True) -> str:
        """Make a new signing key (it becomes the active one); returns its key id.

        ``lock=False`` is for a caller that holds :func:`keys_lock` already."""
        if lock:
            with keys_lock(self.key_dir):
                return self.create(actor, lock=False)
        key = crypto.generate_key()
        kid = crypto.key_id(key)
        try:
            crypto.save_private_key(key, self.key_dir / f"{kid}.pem")  # the file first, then the row
        except OSError as e:
            raise KeysReadOnlyError(self.key_dir, e) from e
        self.store.add_key(kid, crypto.public_key_pem(key.public_key()), actor)
        with self._lock:
            self._private[kid] = key
        return kid

    def signing_key(self) -> tuple[str, crypto.Ed25519PrivateKey]:
        """(key id, private key) of the newest key that is not revoked and whose file is here."""
        for row in reversed(self.store.signing_keys()):
            if row["revoked_at"] is None and (row["key_id"] in self._private
                                              or (self.key_dir / f"{row['key_id']}.pem").is_file()):
                return row["key_id"], self._load_private(row["key_id"])
        raise NotInitialisedError(f"this hub has no usable signing key in {self.key_dir}",
                                  hint="run `llamahub hub init --data DIR` (or rotate the key as admin); "
                                       "replicas must all see the same --keys-dir")

    def _load_private(self, kid: str) -> crypto.Ed25519PrivateKey:
        with self._lock:
            if kid not in self._private:
                self._private[kid] = crypto.load_private_key(self.key_dir / f"{kid}.pem")
            return self._private[kid]

    def _public_key(self, row: dict[str, Any]) -> crypto.Ed25519PublicKey:
        kid = row["key_id"]
        with self._lock:
            if kid not in self._public:
                self._public[kid] = crypto.load_public_key_pem(row["public_pem"])
            return self._public[kid]

    def verifying_keys(self) -> dict[str, crypto.Ed25519PublicKey]:
        """key id → public key, for every key that is not revoked."""
        rows = self.store.signing_keys()
        return {r["key_id"]: self._public_key(r) for r in rows if r["revoked_at"] is None}

    def is_revoked(self, kid: str) -> bool:
        return any(r["key_id"] == kid and r["revoked_at"] is not None for r in self.store.signing_keys())

    def published(self) -> list[dict[str, Any]]:
        """The public keys as served at ``/.well-known/llamahub-keys.json`` (JWK-style, plus status)."""
        out = []
        for row in self.store.signing_keys():
            raw = crypto.public_key_raw(self._public_key(row))
            out.append({"kid": row["key_id"], "kty": "OKP", "crv": "Ed25519", "alg": crypto.ALGORITHM,
                        "x": crypto.b64url_encode(raw), "public_key_pem": row["public_pem"],
                        "created_at": row["created_at"], "revoked": row["revoked_at"] is not None,
                        "revoked_at": row["revoked_at"]})
        return out

    def revoke(self, kid: str, actor: str = "admin") -> str:
        """Revoke ``kid``; returns the key id that signs from now on (a new one if none was left)."""
        if not any(r["key_id"] == kid for r in self.store.signing_keys()):
            raise NotFoundError(f"no signing key {kid}", code="unknown_key",
                                hint="GET /.well-known/llamahub-keys.json lists the key ids")
        self.store.revoke_key(kid, actor)
        try:
            return self.signing_key()[0]
        except NotInitialisedError:
            with keys_lock(self.key_dir):
                try:  # another replica may have made one meanwhile
                    return self.signing_key()[0]
                except NotInitialisedError:
                    return self.create(actor, lock=False)
