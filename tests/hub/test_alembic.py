"""Alembic migrations: a hub database made before Alembic upgrades in place on SQLite (a file written
by the code on main at 7e6b78a: tests/hub/make_pre_alembic_db.py) and on PostgreSQL (the frozen
baseline tables, as that code made them, with rows written through them), keeping every row."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from hubtest import run_cli
from pgcluster import Cluster
from sqlalchemy import create_engine, insert
from sqlalchemy.exc import IntegrityError

from llamahub.hub import migrations
from llamahub.hub.migrations import baseline
from llamahub.hub.store import Store

DATA = Path(__file__).resolve().parent / "data"
PRE_ALEMBIC = DATA / "hub-main-7e6b78a.db"
OLDER = DATA / "hub-main-d32997c.db"


def _rows(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "AND name NOT IN ('alembic_version', 'sqlite_sequence')")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_the_head_the_store_knows_is_alembics() -> None:
    assert migrations.head() == migrations.HEAD


def test_a_hub_made_before_alembic_upgrades_in_place(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    shutil.copy(PRE_ALEMBIC, data / "hub.db")
    (data / "keys").mkdir()
    before = _rows(data / "hub.db")
    done = run_cli("hub", "migrate", "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"database at revision {migrations.head()} (was made before Alembic)"
    assert _rows(data / "hub.db") == before  # every row kept as it was
    store = Store.for_dir(data)
    try:
        [user] = [u for u in before["users"] if u[1] == "ceo@megacorp.example"]
        profile = store.get_profile(user[0])
        assert profile["mau"] == 3_000_000_000 and profile["mau_at"] == {"llama2": 2_500_000_000}
        assert store.files(["llama-2-70b"])[0]["size"] == 17_246_588_928
        assert store.served_bytes("l1") == {"llama-2-70b/consolidated.00.pth": 3_000_000_000}
        [grant] = store.grants()
        assert grant["max_mau"] == 5_000_000_000 and grant["uses"] == ["research"]
        assert set(store.acceptances(user[0])) == {"llama2"}
        # the new code writes to it, and the audit log stays append-only
        store.set_profile(user[0], {"mau": 4_000_000_000})
        assert store.get_profile(user[0])["mau"] == 4_000_000_000
        with pytest.raises(IntegrityError, match="append-only"), store.write() as conn:
            conn.exec_driver_sql("DELETE FROM audit")
    finally:
        store.close()
    again = run_cli("hub", "migrate", "--data", str(data))
    assert again.stdout.strip() == f"database at revision {migrations.head()} (was {migrations.head()})"


def test_an_older_hub_goes_through_the_baseline_then_on(tmp_path: Path) -> None:
    shutil.copy(OLDER, tmp_path / "hub.db")
    store = Store.for_dir(tmp_path)
    try:
        assert store.create_all() == (None, migrations.head())
        assert store.audit_log(action="schema.upgrade")  # revision 0001 added the columns it lacked
        assert store.create_all() == (migrations.head(), migrations.head())
    finally:
        store.close()


def test_a_new_database_is_made_by_the_revisions(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert store.create_all() == (None, migrations.head())
        user, _ = store.create_user("n@example.com", "N", "Acme", "US")
        assert store.get_user(user["id"])["email"] == "n@example.com"
    finally:
        store.close()


def test_a_postgres_hub_made_before_alembic_gets_native_types(pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database()
    engine = create_engine(url)
    at, detail = "2026-11-30T10:11:12.345678+00:00", {"families": ["llama-2"], "n": 1}
    with engine.begin() as conn:  # what the hub before Alembic made: create_all, strings and JSON text
        baseline.metadata.create_all(conn)
        conn.execute(insert(baseline.users).values(id="u_1", email="a@x", name="A", organisation="X",
                                                   organisation_key="x", country="US", created_at=at))
        conn.execute(insert(baseline.profiles).values(user_id="u_1", mau=2_000_000_000,
                                                      intended_uses='["chatbot"]', certifications="[]",
                                                      eu_domiciled=False, updated_at=at))
        conn.execute(insert(baseline.audit).values(at=at, actor="operator", action="test.old", target=None,
                                                   detail=json.dumps(detail, sort_keys=True)))
    engine.dispose()
    store = Store(url)
    try:
        assert store.create_all() == (None, migrations.head())
        assert store.get_user("u_1")["created_at"] == at
        assert store.get_profile("u_1")["intended_uses"] == ["chatbot"]
        store.set_profile("u_1", {"mau": 3_000_000_000})  # over 2^31 now that the column is bigint
        assert store.get_profile("u_1")["mau"] == 3_000_000_000
        [old] = store.audit_log(action="test.old")
        assert old["detail"] == detail and old["at"] == at
        with pytest.raises(IntegrityError, match="append-only"), store.write() as conn:
            conn.exec_driver_sql("DELETE FROM audit")
    finally:
        store.close()
