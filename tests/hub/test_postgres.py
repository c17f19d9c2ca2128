"""The hub on PostgreSQL: native column types, append-only enforced by the database, and a real hub
process on either database; restarting PostgreSQL under a running hub gives clean 503s, then works."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hubtest import NO_RATE_LIMITS, file_url, run_cli, serving
from pgcluster import Cluster
from sqlalchemy.exc import IntegrityError

from llamahub.hub.store import FileRecord, Store


@pytest.fixture
def pg_store(pg_cluster: Cluster) -> Iterator[Store]:
    store = Store(pg_cluster.new_database())
    store.create_all()
    yield store
    store.close()


def _types(store: Store) -> dict[str, str]:
    with store.read() as conn:
        rows = conn.exec_driver_sql("SELECT table_name, column_name, data_type "
                                    "FROM information_schema.columns WHERE table_schema = 'public'").all()
    return {f"{r[0]}.{r[1]}": r[2] for r in rows}


def test_sizes_mau_and_expiry_are_64_bit_times_tz_json_jsonb(pg_store: Store) -> None:
    types = _types(pg_store)
    for column in ("files.size", "layout_files.size", "profiles.mau", "grants.max_mau", "links.expires",
                   "links.max_downloads", "served.bytes", "audit.id", "enterprise_requests.mau"):
        assert types[column] == "bigint", column
    for column in ("users.created_at", "audit.at", "grants.not_before", "links.issued_at", "served.last_at"):
        assert types[column] == "timestamp with time zone", column
    for column in ("audit.detail", "links.policy", "profiles.intended_uses", "grants.families"):
        assert types[column] == "jsonb", column
    user, _ = pg_store.create_user("big@example.com", "B", "Giant", "US")
    pg_store.set_profile(user["id"], {"mau": 3_000_000_000, "intended_uses": ["chatbot"]})
    shard = FileRecord("llama-2-70b/consolidated.00.pth", "ab" * 32, "cd" * 16, 17_246_588_928)
    pg_store.record_variant("llama-2-70b", "llama-2", "llama2", "meta", [shard])
    assert pg_store.get_profile(user["id"])["mau"] == 3_000_000_000
    assert pg_store.files(["llama-2-70b"])[0]["size"] == 17_246_588_928
    # times come back as the ISO strings the store wrote, in UTC
    assert pg_store.get_user(user["id"])["created_at"] == user["created_at"]
    grant = pg_store.create_grant(pg_store.membership(user["id"])["org_id"], ["llama-2"], 4_000_000_000,
                                  "2026-01-01T02:00:00+02:00", None)
    assert pg_store.grants()[0]["not_before"] == "2026-01-01T00:00:00+00:00"  # the same instant, in UTC
    assert grant["max_mau"] == 4_000_000_000


@pytest.mark.parametrize("statement", ["TRUNCATE audit", "TRUNCATE profile_history",
                                       "UPDATE audit SET detail = '{}'::jsonb"])
def test_append_only_tables_refuse_truncate_too(pg_store: Store, statement: str) -> None:
    pg_store.record("operator", "test.mark")
    with pytest.raises(IntegrityError, match="append-only"), pg_store.write() as conn:
        conn.exec_driver_sql(statement)
    assert [e["action"] for e in pg_store.audit_log()][-1] == "test.mark"


def _start_hub(data: Path, *db: str) -> str:
    init = run_cli("hub", "init", "--data", str(data), "--json", *db)
    assert init.returncode == 0, init.stderr
    seeded = run_cli("hub", "seed-demo", "--data", str(data), *db)
    assert seeded.returncode == 0, seeded.stderr
    return json.loads(init.stdout)["admin_token"]


def _user(url: str) -> httpx.Client:
    r = httpx.post(f"{url}/api/users", json={"email": "pg@example.com", "name": "P", "organisation": "PgCo",
                                             "country": "us"})
    assert r.status_code == 201, r.text
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=30)
    big = http.put("/api/profile", json={"mau": 2_500_000_000, "intended_uses": ["chatbot"]})
    assert big.status_code == 200 and http.get("/api/profile").json()["mau"] == 2_500_000_000  # over 2^31
    assert http.put("/api/profile", json={"mau": 1_000, "intended_uses": ["chatbot"]}).status_code == 200
    assert http.post("/api/licenses/llama-debug/accept").status_code == 201
    return http


def test_a_hub_process_on_each_database(db_url: str, tmp_path: Path) -> None:
    """The same flow on both: register, a profile over 2^31, accept, link, download to its cap."""
    db = [] if db_url.startswith("sqlite") else ["--database-url", db_url]
    data = tmp_path / "hub"
    token = _start_hub(data, *db)
    with serving(data, token, *NO_RATE_LIMITS, *db) as (hub, _):
        http = _user(hub.url)
        link = http.post("/api/links", json={"variant": "llama-debug-2-chat", "max_downloads": 1}).json()
        url = file_url(link["url"], "llama-debug-2-chat/params.json")
        first = httpx.get(url)
        assert first.status_code == 200 and json.loads(first.content)
        again = httpx.get(url)
        assert again.status_code == 403 and again.json()["error"]["code"] == "download_cap_reached"
        audit = hub.admin().get("/api/admin/audit", params={"action": "download.start"})
        assert audit.status_code == 200 and len(audit.json()["entries"]) == 1
        http.close()


def test_restarting_postgres_gives_503_then_the_hub_recovers(pg_cluster: Cluster, tmp_path: Path) -> None:
    db = ["--database-url", pg_cluster.new_database()]
    data = tmp_path / "hub"
    token = _start_hub(data, *db)
    with serving(data, token, *NO_RATE_LIMITS, *db) as (hub, proc):
        http = _user(hub.url)
        assert http.post("/api/links", json={"variant": "llama-debug-2-chat"}).status_code == 201
        pg_cluster.stop("fast")
        try:
            down = [http.post("/api/links", json={"variant": "llama-debug-2-chat"}),
                    http.get("/api/profile"), httpx.get(f"{hub.url}/api/health")]
        finally:
            pg_cluster.start()
        for response in down:
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "database_unavailable" and "retry" in error["hint"]
            assert response.headers["Retry-After"] == "2" and "postgres" not in response.text.lower()
        assert proc.poll() is None  # the hub kept running
        after = http.post("/api/links", json={"variant": "llama-debug-2-chat"})
        assert after.status_code == 201, after.text
        assert http.get("/api/profile").json()["mau"] == 1_000
        links = http.get("/api/links").json()
        assert len(links["links"] if isinstance(links, dict) else links) == 2
        http.close()


def test_two_hub_processes_on_one_database_race_on_the_same_rows(pg_cluster: Cluster, tmp_path: Path) -> None:
    """Two replicas (one data dir, one database), 18 requests at once on one user's rows: profile
    updates, acceptances of one license and downloads of one file through one link. No 5xx, one
    acceptance, the link's cap exact, every update audited."""
    db = ["--database-url", pg_cluster.new_database()]
    data = tmp_path / "hub"
    token = _start_hub(data, *db)
    with serving(data, token, *NO_RATE_LIMITS, *db, log=tmp_path / "a.log") as (a, _), \
            serving(data, token, *NO_RATE_LIMITS, *db, log=tmp_path / "b.log") as (b, _):
        http = _user(a.url)
        auth = {"Authorization": http.headers["Authorization"]}
        link = http.post("/api/links", json={"variant": "llama-debug-2-chat", "max_downloads": 3}).json()
        path = "llama-debug-2-chat/params.json"
        barrier = threading.Barrier(18)

        def work(i: int) -> int:
            base = (a, b)[i % 2].url
            barrier.wait()
            if i % 3 == 0:
                body = {"mau": 1_000 + i, "intended_uses": ["chatbot"]}
                return httpx.put(f"{base}/api/profile", headers=auth, json=body, timeout=60).status_code
            if i % 3 == 1:
                return httpx.post(f"{base}/api/licenses/llama2/accept", headers=auth, timeout=60).status_code
            return httpx.get(file_url(link["url"], path).replace(a.url, base), timeout=60).status_code

        with ThreadPoolExecutor(18) as pool:
            codes = list(pool.map(work, range(18)))
        puts, accepts, gets = codes[0::3], codes[1::3], codes[2::3]
        assert puts == [200] * 6, codes
        assert sorted(accepts) == [200] * 5 + [201], codes
        assert sorted(gets) == [200] * 3 + [403] * 3, codes
        audit = hub_audit(a.url, token)
        assert audit.count("profile.update") == 2 + 6 and audit.count("license.accept") == 2
        assert audit.count("download.start") == 1
        http.close()


def hub_audit(url: str, admin_token: str) -> list[str]:
    response = httpx.get(f"{url}/api/admin/audit", params={"limit": 1000},
                         headers={"Authorization": f"Bearer {admin_token}"})
    assert response.status_code == 200, response.text
    return [e["action"] for e in response.json()["entries"]]
