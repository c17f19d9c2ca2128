"""Pinned hub keys and signed license-acceptance receipts, checked without the network.

On first contact the client pins the hub's published Ed25519 keys (trust on first use, like SSH);
later key ids the hub announces are added only over a connection to the same hub. A receipt is
the hub's signed statement that this account accepted one license version. Offline, a cached
variant loads only if the receipt for its license verifies against a pinned key.

Layout (per hub, in the data dir): ``hubs/<hub-id>/keys.json`` ({kid: PEM}) and
``hubs/<hub-id>/receipts/<license-id>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from llamahub import crypto
from llamahub.errors import ReceiptError
from llamahub.fsutil import atomic_write
from llamahub.policy.terms import license_terms

RECEIPT_TYPE = "llamahub.license_acceptance"


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True))


class TrustStore:
    """What this client keeps about one hub: its pinned keys and this account's receipts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def keys_path(self) -> Path:
        return self.root / "keys.json"

    def receipt_path(self, license_id: str) -> Path:
        return self.root / "receipts" / f"{license_id}.json"

    # --- keys ------------------------------------------------------------------------------------

    def pinned(self) -> dict[str, str]:
        if not self.keys_path.is_file():
            return {}
        return dict(json.loads(self.keys_path.read_text()))

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {kid: crypto.load_public_key_pem(pem) for kid, pem in self.pinned().items()}

    def pin(self, published: dict[str, Any]) -> list[str]:
        """Pin keys from the hub's ``/.well-known/llamahub-keys.json``; returns the new key ids.

        Revoked keys are dropped from the pin set, so receipts they signed stop verifying.
        """
        pins = self.pinned()
        added = []
        for info in published.get("keys") or []:
            kid, pem = str(info.get("kid", "")), info.get("public_key_pem")
            if info.get("revoked"):
                pins.pop(kid, None)
                continue
            if not pem or crypto.key_id(crypto.load_public_key_pem(pem)) != kid:
                continue  # a key id must be the key's own fingerprint
            if kid not in pins:
                added.append(kid)
            pins[kid] = pem
        _write_json(self.keys_path, pins)
        return added

    # --- receipts --------------------------------------------------------------------------------

    def save_receipt(self, receipt: dict[str, Any]) -> dict[str, Any]:
        """Verify a receipt against the pinned keys and keep it; returns its payload."""
        payload = self.verify(receipt)
        _write_json(self.receipt_path(str(payload["license_id"])), receipt)
        return payload

    def verify(self, receipt: dict[str, Any], license_id: str | None = None) -> dict[str, Any]:
        keys = self.public_keys()
        if not keys:
            raise ReceiptError("no public key of this hub is pinned, so no receipt can be checked",
                               hint="connect once (`llamahub license status`) to pin the hub's keys")
        try:
            payload = crypto.verify_document(receipt, keys)
        except crypto.SignatureError as e:
            raise ReceiptError(f"the acceptance receipt does not verify: {e.message}",
                               hint="run `llamahub license status` online to fetch a fresh receipt") from e
        if payload.get("type") != RECEIPT_TYPE or (license_id and payload.get("license_id") != license_id):
            raise ReceiptError("the receipt is not a license acceptance for this license",
                               hint="run `llamahub license status` online to fetch a fresh receipt")
        return payload

    def receipt(self, license_id: str) -> dict[str, Any]:
        """The verified payload of the receipt for ``license_id``, or ReceiptError."""
        path = self.receipt_path(license_id)
        title = license_terms(license_id).title
        if not path.is_file():
            raise ReceiptError(f"no acceptance receipt for the {title} is stored on this machine",
                               hint=f"run `llamahub license accept {license_id}` (online) first")
        return self.verify(json.loads(path.read_text()), license_id)

    def payloads(self) -> dict[str, dict[str, Any]]:
        """{license id: verified receipt payload} of every stored receipt that verifies."""
        out = {}
        folder = self.root / "receipts"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                out[path.stem] = self.receipt(path.stem)
            except (ReceiptError, ValueError, OSError):
                continue
        return out

    def accepted(self) -> dict[str, str]:
        """{license id: accepted_at} for every stored receipt that verifies."""
        out = {}
        folder = self.root / "receipts"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                payload = self.receipt(path.stem)
            except (ReceiptError, ValueError, OSError):
                continue
            out[path.stem] = str(payload["accepted_at"])
        return out
