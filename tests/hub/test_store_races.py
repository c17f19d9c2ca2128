"""Concurrent writers on the same rows, on SQLite and PostgreSQL: two stores (two replicas' engines)
and many threads each; never an IntegrityError, and every count exact afterwards."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llamahub.hub.errors import LinkError
from llamahub.hub.store import Store

THREADS = 12


@pytest.fixture
def stores(db_url: str) -> Iterator[list[Store]]:
    """Two stores on one database, as two hub replicas have."""
    first = Store(db_url)
    first.create_all()
    second = Store(db_url)
    second.create_all()  # a second start finds the schema made: nothing to do
    yield [first, second]
    first.close()
    second.close()


def _race(stores: list[Store], work: Callable[[Store, int], Any], n: int = THREADS) -> list[Any]:
    """Run ``work(store, i)`` for i < n in n threads released together; results or exceptions by i."""
    barrier, out = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = work(stores[i % len(stores)], i)
        except Exception as e:  # the test inspects them
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return out


def _actions(store: Store, prefix: str) -> list[dict]:
    return store.audit_log(action=prefix, limit=10_000)


def test_set_profile_on_one_user_from_many_threads(stores: list[Store]) -> None:
    user, _ = stores[0].create_user("p@example.com", "P", "Acme", "US")
    results = _race(stores, lambda s, i: s.set_profile(
        user["id"], {"mau": 1_000 + i, "mau_at": {"llama2": 3_000_000_000 + i}},
        as_of={"llama2": "2023-07-18"}))
    assert not [r for r in results if isinstance(r, Exception)], results
    history = stores[1].profile_history(user["id"])
    assert len(history) == THREADS and len(_actions(stores[0], "profile.update")) == THREADS
    assert sorted(h["mau"] for h in history) == [1_000 + i for i in range(THREADS)]
    final = stores[0].get_profile(user["id"])
    assert final["mau"] == history[-1]["mau"] and final["mau_at"]["llama2"] == final["mau"] + 2_999_999_000


def test_members_of_one_organisation_declare_its_mau_at_once(stores: list[Store]) -> None:
    """Every active member writes the organisation's one MAU row per license version."""
    founder, _ = stores[0].create_user("f@acme.example", "F", "Acme", "US")
    org = (stores[0].membership(founder["id"]) or {})["org_id"]
    ids = [founder["id"]]
    for i in range(1, THREADS):
        token = stores[0].invite(org, f"m{i}@acme.example", by=f"user:{founder['id']}")
        ids.append(stores[0].create_user(f"m{i}@acme.example", "M", "Acme", "US", invitation=token)[0]["id"])
    results = _race(stores, lambda s, i: s.set_profile(ids[i], {"mau": i, "mau_at": {"llama3_1": 10**10 + i}},
                                                       as_of={"llama3_1": "2024-07-23"}))
    assert not [r for r in results if isinstance(r, Exception)], results
    [declared] = stores[1].get_profile(founder["id"])["mau_declarations"]
    assert declared["mau"] in {10**10 + i for i in range(THREADS)}
    assert len(_actions(stores[0], "profile.update")) == THREADS


def test_start_download_counts_every_byte_once(stores: list[Store]) -> None:
    user, _ = stores[0].create_user("d@example.com", "D", "Acme", "US")
    stores[0].add_key("k" * 16, "pem")
    stores[0].create_link("l_race", user["id"], "llama-debug", "k" * 16, {"v": 1}, expires=2**40,
                          max_downloads=1)
    size = 10 * 2**30  # a 10 GiB shard: each request reserves 1 GiB of its allowance
    results = _race(stores, lambda s, i: s.reserve_bytes("l_race", "consolidated.00.pth", 2**30, need=2**30,
                                                          allowance=size))
    refused = [r for r in results if isinstance(r, LinkError)]
    assert len(refused) == THREADS - 10 and all(r.code == "download_cap_reached" for r in refused)
    assert sorted(r for r in results if isinstance(r, int)) == [k * 2**30 for k in range(1, 11)]
    assert stores[1].served_bytes("l_race") == {"consolidated.00.pth": size}
    assert [e["target"] for e in _actions(stores[0], "download.start")] == ["consolidated.00.pth"]


def test_accepting_one_license_at_once_records_it_once(stores: list[Store]) -> None:
    user, _ = stores[0].create_user("a@example.com", "A", "Acme", "US")
    results = _race(stores, lambda s, i: s.accept_license(user["id"], "llama2", "ab" * 32))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(created for _, created in results) == 1
    assert len({row["id"] for row, _ in results}) == 1
    assert len(_actions(stores[1], "license.accept")) == 1


def test_users_naming_a_new_organisation_at_once(stores: list[Store]) -> None:
    """One founds the record; everyone else is a pending member (no duplicate-name error)."""
    results = _race(stores, lambda s, i: s.create_user(f"u{i}@newco.example", f"U{i}", "NewCo", "US"))
    assert not [r for r in results if isinstance(r, Exception)], results
    roles = sorted((stores[0].membership(user["id"]) or {}).get("status") for user, _ in results)
    assert roles == ["active"] + ["pending"] * (THREADS - 1)
    assert len(stores[0].organisations()) == 1 and len(_actions(stores[0], "org.create")) == 1


def test_grants_and_links_at_once(stores: list[Store]) -> None:
    user, _ = stores[0].create_user("g@example.com", "G", "Acme", "US")
    stores[0].add_key("k" * 16, "pem")
    org = (stores[0].membership(user["id"]) or {})["org_id"]

    def work(s: Store, i: int) -> Any:
        if i % 2:
            return s.create_grant(org, ["llama-2"], 5_000_000_000, "2026-01-01T00:00:00+00:00", None)
        return s.create_link(f"l_{i}", user["id"], "llama-2", "k" * 16, {"v": 1}, expires=2**40,
                             max_downloads=5)

    results = _race(stores, work)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(stores[1].grants(org)) == THREADS // 2 and len(stores[1].links_of(user["id"])) == THREADS // 2
    assert {g["max_mau"] for g in stores[0].grants(org)} == {5_000_000_000}
    assert len(_actions(stores[0], "grant.create")) == THREADS // 2
    assert len(_actions(stores[0], "link.issue")) == THREADS // 2


def test_replicas_starting_at_once_make_the_schema_once(db_url: str) -> None:
    """Every replica upgrades the schema at start: on a new database one makes it, the rest wait."""
    from llamahub.hub import migrations

    opened: list[Store] = []

    def start(_: Store | None, i: int) -> tuple[str | None, str | None]:
        store = Store(db_url)
        opened.append(store)
        return store.create_all()

    try:
        results = _race([None], start, n=4)  # type: ignore[list-item]
    finally:
        for store in opened:
            store.close()
    head = migrations.head()
    assert results.count((None, head)) == 1 and results.count((head, head)) == 3, results
