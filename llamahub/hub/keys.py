"""The hub's signing keys: private keys in ``DIR/keys/<key id>.pem`` (0600), public keys in the database.

The newest key that is not revoked signs; every key that is not revoked verifies, so links issued
before a rotation keep working until their key is revoked. Revoking the last usable key creates a
new one, so the hub can always sign.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from llamahub import crypto
from llamahub.hub.errors import NotFoundError, NotInitialisedError
from llamahub.hub.store import Store


class KeyRing:
    def __init__(self, store: Store, key_dir: Path) -> None:
        self.store = store
        self.key_dir = Path(key_dir)
        self._private: dict[str, crypto.Ed25519PrivateKey] = {}
        self._public: dict[str, crypto.Ed25519PublicKey] = {}
        self._lock = threading.Lock()

    def create(self, actor: str = "operator") -> str:
        """Make a new signing key (it becomes the active one); returns its key id."""
        key = crypto.generate_key()
        kid = crypto.key_id(key)
        crypto.save_private_key(key, self.key_dir / f"{kid}.pem")
        self.store.add_key(kid, crypto.public_key_pem(key.public_key()), actor)
        with self._lock:
            self._private[kid] = key
        return kid

    def signing_key(self) -> tuple[str, crypto.Ed25519PrivateKey]:
        """(key id, private key) of the newest key that is not revoked."""
        for row in reversed(self.store.signing_keys()):
            if row["revoked_at"] is None and (self.key_dir / f"{row['key_id']}.pem").is_file():
                return row["key_id"], self._load_private(row["key_id"])
        raise NotInitialisedError("this hub has no usable signing key",
                                  hint="run `llamahub hub init --data DIR` (or rotate the key as admin)")

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
            return self.create(actor)
