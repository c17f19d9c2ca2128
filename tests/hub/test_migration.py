"""A database written by the code on main (tests/hub/make_legacy_db.py) is upgraded in place:
organisations become records, grants and requests point at them, admin tokens get an operator,
and the look-alike organisation of an old user inherits nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hubtest import run_cli

from llamahub.hub.accounts import to_grant
from llamahub.hub.store import Store
from llamahub.policy import Profile

LEGACY = Path(__file__).resolve().parent / "data" / "hub-main-d32997c.db"


def _hub(tmp_path: Path) -> Path:
    data = tmp_path / "hub"
    data.mkdir()
    shutil.copy(LEGACY, data / "hub.db")
    return data


def test_rows_of_main_are_migrated_in_place(tmp_path: Path) -> None:
    data = _hub(tmp_path)
    listed = run_cli("hub", "grants", "list", "--json", "--data", str(data))  # opening upgrades it
    assert listed.returncode == 0, listed.stderr
    [grant] = json.loads(listed.stdout)
    store = Store.for_dir(data)
    try:
        users = {u: store.membership(u) for u in _user_ids(store)}
        mega = next(m for m in users.values() if m["org_name"] == "MegaCorp")
        lookalike = [m for m in users.values() if m["org_id"] == mega["org_id"] and m is not mega]
        assert grant["org_id"] == mega["org_id"] and grant["families"] == ["llama-2"]
        assert (mega["role"], mega["status"]) == ("admin", "active")  # the first user founded it
        assert [(m["role"], m["status"]) for m in lookalike] == [("member", "pending")]
        other = next(m for m in users.values() if m["org_name"] == "Other Ltd")
        [request] = _requests(store)
        assert request["org_id"] == other["org_id"] and request["note"] == "a support bot"
        profile = store.get_profile(mega["user_id"])
        assert profile["mau"] == 1_500_000_000 and profile["certifications"] == ["SOC 2"]
        audit = store.audit_log(action="schema.upgrade")
        assert audit and "grants.org_id" in audit[0]["detail"]["added"]
        grants = store.grants(mega["org_id"])
        assert grants and grants[0]["id"] == grant["id"]
        # the look-alike's membership is pending: the gates see no organisation id, so no grant applies
        pending = Profile(organisation="megacorp", organisation_id=None, mau=1, intended_uses=("chatbot",),
                          accepted={})
        assert not to_grant(grants[0]).applies_to(pending, _Llama2())
    finally:
        store.close()
    again = run_cli("hub", "grants", "list", "--json", "--data", str(data))  # idempotent
    assert json.loads(again.stdout) == [grant]
    ops = Store.for_dir(data)
    try:
        with ops.read() as conn:
            tokens = conn.exec_driver_sql("SELECT operator_id FROM tokens WHERE role = 'admin'").all()
            names = conn.exec_driver_sql("SELECT name FROM operators").all()
        assert tokens and all(t[0] for t in tokens) and [n[0] for n in names] == ["admin"]
    finally:
        ops.close()


class _Llama2:
    name, family, license = "llama-2-7b", "llama-2", "llama2"


def _user_ids(store: Store) -> list[str]:
    with store.read() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT id FROM users ORDER BY created_at")]


def _requests(store: Store) -> list[dict]:
    from llamahub.hub import enterprise

    return enterprise.listing(store)
