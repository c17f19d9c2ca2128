"""The hub-signed profile, grant documents and revocation list this client keeps for one hub.

Every online session fetches them (``GET /api/credentials``) and keeps what verifies against the
pinned hub keys; offline, the gates run on exactly that: the signed profile (a local edit of
``config.json`` changes nothing), the organisation's grants, minus every grant the newest signed
revocation list names. A revocation therefore reaches this machine on its next online call and
holds offline after it.

Layout: ``hubs/<hub-id>/profile.json``, ``grants/<grant-id>.json``, ``revocations.json``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from llamahub import crypto
from llamahub.errors import ReceiptError
from llamahub.fsutil import atomic_write
from llamahub.policy import Grant, Profile

PROFILE_TYPE = "llamahub.signed_profile"
GRANT_TYPE = "llamahub.enterprise_grant"
REVOCATIONS_TYPE = "llamahub.grant_revocations"


def _when(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value)) if value else None


class Credentials:
    """Signed documents of one hub, verified with ``keys`` (the pinned public keys) on every read."""

    def __init__(self, root: Path, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.root = Path(root)
        self.keys = dict(keys)

    def _verified(self, doc: Any, kind: str) -> dict[str, Any]:
        try:
            payload = crypto.verify_document(doc, self.keys)
        except crypto.SignatureError as e:
            raise ReceiptError(f"a stored {kind} does not verify: {e.message}",
                               hint="go online once (`llamahub license status`) to fetch it again") from e
        if payload.get("type") != kind:
            raise ReceiptError(f"a stored document is not a {kind}",
                               hint="go online once to fetch fresh ones")
        return payload

    def _read(self, path: Path, kind: str) -> dict[str, Any] | None:
        try:
            return self._verified(json.loads(path.read_text()), kind)
        except (OSError, ValueError, ReceiptError):
            return None

    # --- saving (online) ---------------------------------------------------------------------------

    def save(self, bundle: Mapping[str, Any]) -> None:
        """Verify and keep what ``GET /api/credentials`` returned (nothing is kept if any part fails)."""
        self._verified(bundle.get("profile"), PROFILE_TYPE)
        grants = [(self._verified(doc, GRANT_TYPE), doc) for doc in bundle.get("grants") or []]
        self._verified(bundle.get("revocations"), REVOCATIONS_TYPE)
        atomic_write(self.root / "profile.json", json.dumps(bundle["profile"], sort_keys=True))
        folder = self.root / "grants"
        folder.mkdir(parents=True, exist_ok=True)
        keep = {f"{payload['id']}.json" for payload, _ in grants}
        for old in folder.glob("*.json"):
            if old.name not in keep:
                old.unlink()
        for payload, doc in grants:
            atomic_write(folder / f"{payload['id']}.json", json.dumps(doc, sort_keys=True))
        self.save_revocations(bundle["revocations"])

    def save_revocations(self, doc: Mapping[str, Any]) -> None:
        """Keep a signed revocation list unless the stored one is newer."""
        payload = self._verified(doc, REVOCATIONS_TYPE)
        have = self.revocations_payload()
        if have is None or str(have.get("issued_at")) <= str(payload.get("issued_at")):
            atomic_write(self.root / "revocations.json", json.dumps(doc, sort_keys=True))

    # --- reading (offline too) ---------------------------------------------------------------------

    def profile_payload(self) -> dict[str, Any] | None:
        return self._read(self.root / "profile.json", PROFILE_TYPE)

    def revocations_payload(self) -> dict[str, Any] | None:
        return self._read(self.root / "revocations.json", REVOCATIONS_TYPE)

    def revoked(self) -> dict[str, str]:
        payload = self.revocations_payload() or {}
        return {str(k): str(v) for k, v in dict(payload.get("revoked") or {}).items()}

    def profile(self, accepted: Mapping[str, str]) -> Profile | None:
        """The hub-signed profile as the gates take it (None when none is stored or it does not verify)."""
        p = self.profile_payload()
        if p is None:
            return None
        return Profile(organisation=str(p["organisation"]), organisation_id=p.get("organisation_id"),
                       mau=p.get("mau"), mau_at=dict(p.get("mau_at") or {}),
                       intended_uses=tuple(p.get("intended_uses") or ()), accepted=accepted,
                       country=p.get("country"), eu_domiciled=bool(p.get("eu_domiciled")),
                       certifications=tuple(p.get("certifications") or ()))

    def grants(self) -> list[Grant]:
        """Every stored grant that verifies; one the revocation list names counts as revoked."""
        revoked = self.revoked()
        out = []
        folder = self.root / "grants"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            g = self._read(path, GRANT_TYPE)
            if g is None:
                continue
            not_before = _when(g.get("not_before"))
            if not_before is None:
                continue
            out.append(Grant(id=str(g["id"]), organisation=str(g["organisation"]),
                             families=tuple(g.get("families") or ()), max_mau=g.get("max_mau"),
                             not_before=not_before, expires=_when(g.get("expires")),
                             revoked=bool(g.get("revoked_at")) or str(g["id"]) in revoked,
                             organisation_id=g.get("org_id"), variants=tuple(g.get("variants") or ()),
                             uses=tuple(g.get("uses") or ())))
        return out
