"""Pinned hub keys and signed acceptance receipts, verified without the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamahub import crypto
from llamahub.client.trust import TrustStore
from llamahub.errors import ReceiptError


def _published(*keys: Any, revoked: frozenset[str] = frozenset()) -> dict[str, Any]:
    out = []
    for key in keys:
        kid = crypto.key_id(key.public_key())
        out.append({"kid": kid, "public_key_pem": crypto.public_key_pem(key.public_key()),
                    "revoked": kid in revoked})
    return {"keys": out}


def _receipt(key: Any, license_id: str = "llama2") -> dict[str, Any]:
    payload = {"type": "llamahub.license_acceptance", "v": 1, "license_id": license_id,
               "accepted_at": "2026-11-20T10:00:00+00:00", "user_id": "u_1", "acceptance_id": "a_1"}
    return crypto.sign_document(payload, key)


def test_receipt_verifies_against_pinned_key(tmp_path: Path) -> None:
    key = crypto.generate_key()
    store = TrustStore(tmp_path)
    assert store.pin(_published(key)) == [crypto.key_id(key.public_key())]
    store.save_receipt(_receipt(key))
    assert store.receipt("llama2")["accepted_at"].startswith("2026-11-20")
    assert store.accepted() == {"llama2": "2026-11-20T10:00:00+00:00"}


def test_receipt_from_an_unpinned_key_is_refused(tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    store.pin(_published(crypto.generate_key()))
    with pytest.raises(ReceiptError, match="does not verify"):
        store.save_receipt(_receipt(crypto.generate_key()))


def test_no_pinned_key_means_no_receipt_can_be_checked(tmp_path: Path) -> None:
    with pytest.raises(ReceiptError, match="no public key"):
        TrustStore(tmp_path).verify(_receipt(crypto.generate_key()))


def test_missing_receipt_names_the_accept_command(tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    store.pin(_published(crypto.generate_key()))
    with pytest.raises(ReceiptError) as e:
        store.receipt("llama3.1")
    assert "llamahub license accept llama3.1" in (e.value.hint or "")


def test_revoked_key_is_unpinned_and_its_receipts_stop_verifying(tmp_path: Path) -> None:
    old, new = crypto.generate_key(), crypto.generate_key()
    store = TrustStore(tmp_path)
    store.pin(_published(old))
    store.save_receipt(_receipt(old))
    store.pin(_published(old, new, revoked=frozenset({crypto.key_id(old.public_key())})))
    assert set(store.pinned()) == {crypto.key_id(new.public_key())}
    assert store.accepted() == {}


def test_a_key_under_someone_elses_id_is_not_pinned(tmp_path: Path) -> None:
    honest, other = crypto.generate_key(), crypto.generate_key()
    forged = _published(other)
    forged["keys"][0]["kid"] = crypto.key_id(honest.public_key())
    assert TrustStore(tmp_path).pin(forged) == []


def test_receipt_for_another_license_is_refused(tmp_path: Path) -> None:
    key = crypto.generate_key()
    store = TrustStore(tmp_path)
    store.pin(_published(key))
    with pytest.raises(ReceiptError, match="not a license acceptance for this license"):
        store.verify(_receipt(key, "llama3"), "llama2")
