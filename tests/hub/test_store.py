"""The store's transactions and constraints, the blob store's confinement, and the pure link rules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from llamahub.hub import schema
from llamahub.hub.blobs import BlobStore
from llamahub.hub.errors import BadRequestError, LinkError, NotFoundError
from llamahub.hub.links import RangeNotSatisfiable, check_policy, parse_range, split_download_path
from llamahub.hub.store import Store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A new store on SQLite, and one on PostgreSQL (conftest.py's ``db_url``)."""
    s = Store(db_url)
    s.create_all()
    yield s
    s.close()


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    store = Store.for_dir(tmp_path)
    store.create_all()
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    with pytest.raises(IntegrityError), store.write() as conn:
        conn.execute(insert(schema.tokens).values(token_sha256="x" * 64, role="user", user_id="nobody",
                                                  created_at="2026-12-02T00:00:00+00:00"))
    store.close()


def _fail_on(action: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Store.audit

    def audit(conn: Connection, actor: str, what: str, target: str | None = None, **detail: Any) -> None:
        if what == action:
            raise RuntimeError("disk full")
        return real(conn, actor, what, target, **detail)

    monkeypatch.setattr(Store, "audit", staticmethod(audit))


def test_a_failed_acceptance_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    user, _ = store.create_user("a@example.com", "A", "Acme", "US")
    _fail_on("license.accept", monkeypatch)
    with pytest.raises(RuntimeError):
        store.accept_license(user["id"], "llama2", "ab" * 32)
    assert store.acceptances(user["id"]) == {}
    monkeypatch.undo()
    row, created = store.accept_license(user["id"], "llama2", "ab" * 32)
    assert created and store.acceptances(user["id"]) == {"llama2": row}
    assert [e["action"] for e in store.audit_log()].count("license.accept") == 1


def test_a_failed_profile_update_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    user, _ = store.create_user("b@example.com", "B", "Acme", "US")
    store.set_profile(user["id"], {"mau": 5, "intended_uses": ["chatbot"]})
    _fail_on("profile.update", monkeypatch)
    with pytest.raises(RuntimeError):
        store.set_profile(user["id"], {"mau": 900, "intended_uses": ["research"], "eu_domiciled": True})
    assert store.get_profile(user["id"])["mau"] == 5
    assert [h["mau"] for h in store.profile_history(user["id"])] == [5]


def test_acceptance_is_unique_per_user_and_license(store: Store) -> None:
    user, _ = store.create_user("c@example.com", "C", "Acme", "US")
    first, created = store.accept_license(user["id"], "llama3", "cd" * 32)
    second, created_again = store.accept_license(user["id"], "llama3", "ef" * 32)
    assert created and not created_again and second == first
    with pytest.raises(IntegrityError), store.write() as conn:
        conn.execute(insert(schema.acceptances).values(id="a_dup", user_id=user["id"], license_id="llama3",
                                                       text_sha256="00" * 32,
                                                       accepted_at="2026-12-02T00:00:00+00:00"))


@pytest.mark.parametrize("statement", [
    "UPDATE audit SET action = 'x'", "DELETE FROM audit",
    "UPDATE profile_history SET profile = '{}'", "DELETE FROM profile_history",
])
def test_audit_and_profile_history_are_append_only(store: Store, statement: str) -> None:
    user, _ = store.create_user("d@example.com", "D", "Acme", "US")
    store.set_profile(user["id"], {"mau": 1})
    before = store.audit_log()
    with pytest.raises(IntegrityError, match="append-only"), store.write() as conn:
        conn.exec_driver_sql(statement)
    assert store.audit_log() == before and [e["action"] for e in before][-1] == "profile.update"


def test_download_cap_counts_bytes(store: Store) -> None:
    user, _ = store.create_user("e@example.com", "E", "Acme", "US")
    store.add_key("k" * 16, "pem")
    store.create_link("l_1", user["id"], "llama-debug", "k" * 16, {}, expires=2**40, max_downloads=2)
    assert store.reserve_bytes("l_1", "a", 1, need=1, allowance=200) == 1  # a probe costs one byte
    assert store.reserve_bytes("l_1", "a", 60, need=150, allowance=200) == 61  # the first slice of 150
    with pytest.raises(LinkError) as refused:
        store.reserve_bytes("l_1", "a", 100, need=140, allowance=200)
    assert refused.value.code == "download_cap_reached" and refused.value.status == 403
    assert "139 of its 200 bytes" in refused.value.message
    store.release_bytes("l_1", "a", 40)  # the client went away: 40 counted bytes were never sent
    assert store.served_bytes("l_1") == {"a": 21}
    store.release_bytes("l_1", "a", 1000)
    assert store.served_bytes("l_1") == {"a": 0}
    assert [e["target"] for e in store.audit_log(action="download.")] == ["a"]  # the first bytes only


# --- blobs --------------------------------------------------------------------------------------


def test_blob_import_hashes_and_deduplicates(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "hub")
    source = tmp_path / "f.bin"
    source.write_bytes(b"llama" * 1000)
    first = blobs.add_file(source)
    assert first.size == 5000 and first.created
    assert blobs.path(first.sha256).read_bytes() == source.read_bytes()
    assert blobs.path(first.sha256).parent.parent == blobs.objects
    assert not blobs.add_bytes(b"llama" * 1000).created
    assert list(blobs.tmp.iterdir()) == []


def test_blob_paths_stay_inside_the_store(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "hub")
    blobs.ensure()
    outside = tmp_path / "secret"
    outside.write_text("secret")
    for name in ("../../secret", "AB" * 32, "ab" * 31, "/etc/passwd", ""):
        with pytest.raises(NotFoundError):
            blobs.path(name)
    name = "ab" * 32
    (blobs.objects / "ab").mkdir()
    os.symlink(outside, blobs.objects / "ab" / name[2:])  # a planted link pointing out of the store
    with pytest.raises(NotFoundError):
        blobs.path(name)


# --- pure link rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=10-", (10, 99)), ("bytes=-5", (95, 99)),
    ("bytes=90-500", (90, 99)), ("bytes=-500", (0, 99)), ("bytes=5-1", None), ("items=0-1", None),
    ("bytes=0-1,5-6", None), ("bytes=abc", None), ("bytes=1-x", None), ("bytes=²-3", None),
])
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as e:
        parse_range(header, 100)
    assert e.value.status == 416 and e.value.headers == {"Content-Range": "bytes */100"}


def test_split_download_path() -> None:
    assert split_download_path(b"/dl/llama-2/llama-2-7b/consolidated.00.pth") == \
        ("llama-2", "llama-2-7b/consolidated.00.pth")
    for raw in (b"/dl/llama-2/../x", b"/dl/llama-2/a/./b", b"/dl/llama-2//etc/passwd", b"/dl/llama-2/%2e%2e",
                b"/dl/../hub.db", b"/dl/llama-2/a\\b", b"/dl/llama-2/caf\xc3\xa9", b"/other/llama-2/x",
                b"/dl/llama-2/"):
        with pytest.raises(BadRequestError):
            split_download_path(raw)


def test_check_policy() -> None:
    policy = {"v": 1, "link_id": "l", "resource": "http://h/dl/fam/", "family": "fam", "variants": [],
              "subject": "u", "issued": 0, "expires": 100, "max_downloads": 5}
    check_policy(policy, "fam", now=99.0)
    for family, now, code in (("fam", 100.0, "link_expired"), ("other", 50.0, "outside_link_prefix")):
        with pytest.raises(LinkError) as e:
            check_policy(policy, family, now)
        assert e.value.code == code
    with pytest.raises(LinkError) as e:
        check_policy({**policy, "resource": "http://h/dl/other/"}, "fam", 50.0)
    assert e.value.code == "outside_link_prefix"
