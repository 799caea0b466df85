"""The conversation store on a real SQLite file and a real PostgreSQL schema (fresh per
test): round trips, tenant isolation, expiry and purge, conversation chains, input-item
pages, concurrent writers, and a database that goes away and comes back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from gateway.accounting.ledger import open_ledger
from gateway.conversation import ResponseStore, StoredResponse, StoreUnavailable
from gateway.errors import InvalidRequest
from gateway.policy.models import Policy
from tests.integration import tenancy_support
from tests.integration.tenancy_support import PG_URL
from tests.unit.accounting.factories import DEAD_PG_URL, TcpProxy

pg_schema = tenancy_support.pg_schema
pytestmark = pytest.mark.asyncio
NOW = 1_800_000_000


@dataclass
class Clock:
    t: float = NOW

    def __call__(self) -> float:
        return self.t


def resp(id: str, tenant: str = "acme", prev: str | None = None, *,
         expires_at: int | None = None, items: list[dict[str, Any]] | None = None,
         status: str = "completed") -> StoredResponse:
    output = [{"id": f"msg_{id}", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": f"answer {id}", "annotations": []}]}]
    return StoredResponse(
        id=id, tenant=tenant, model="gpt-x", created_at=NOW, status=status,
        previous_response_id=prev,
        input_items=items if items is not None else [{"role": "user", "content": f"q {id}"}],
        output=output,
        response={"id": id, "object": "response", "created_at": NOW, "model": "gpt-x",
                  "status": status, "output": output, "usage": {"input_tokens": 3}},
        provider="openai", upstream_id=None, expires_at=expires_at)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(ledger url, schema) of an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db", None
    return PG_URL, request.getfixturevalue("pg_schema")


@pytest_asyncio.fixture
async def stores(db: tuple[str, str | None]) -> AsyncIterator[Callable[..., ResponseStore]]:
    """Opens stores on the test's database (each like another replica); closes them after."""
    made: list[ResponseStore] = []

    def make(url: str | None = None, **kw: Any) -> ResponseStore:
        s = ResponseStore(url or db[0], db[1], **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


@pytest_asyncio.fixture
async def store(stores: Callable[..., ResponseStore]) -> ResponseStore:
    s = stores(clock=Clock())
    await s.start()
    return s


async def test_put_then_get_gives_back_exactly_what_was_stored(store: ResponseStore) -> None:
    r = replace(resp("resp_1", expires_at=NOW + 60), upstream_id="resp_upstream",
                input_items=[{"role": "user", "content": "nul \x00 and ünïcode ✓"}],
                response={"zeta": 1, "alpha": {"b": 2, "a": 1}, "id": "resp_1"})
    await store.put(r)
    got = await store.get("acme", "resp_1")
    assert got == r
    # GET /v1/responses/{id} serves the object the client got, keys in their order.
    assert got is not None and list(got.response) == ["zeta", "alpha", "id"]
    assert list(got.response["alpha"]) == ["b", "a"]


async def test_put_of_the_same_id_again_replaces_it(store: ResponseStore) -> None:
    await store.put(resp("resp_1", status="incomplete"))
    await store.put(resp("resp_1"))
    got = await store.get("acme", "resp_1")
    assert got is not None and got.status == "completed"
    assert [c.id for c in await store.chain("acme", "resp_1") or []] == ["resp_1"]


async def test_another_tenants_id_is_not_found_by_any_call(store: ResponseStore) -> None:
    await store.put(resp("resp_a"))
    assert await store.get("beta", "resp_a") is None
    assert await store.chain("beta", "resp_a") is None
    assert await store.input_items("beta", "resp_a", after=None, before=None, limit=20,
                                   order="desc") is None
    assert await store.delete("beta", "resp_a") is False
    assert await store.get("acme", "resp_a") is not None


async def test_the_same_id_under_two_tenants_are_two_responses(store: ResponseStore) -> None:
    await store.put(resp("resp_x", "acme"))
    await store.put(replace(resp("resp_x", "beta"), model="other"))
    a, b = await store.get("acme", "resp_x"), await store.get("beta", "resp_x")
    assert a is not None and b is not None and (a.model, b.model) == ("gpt-x", "other")


async def test_delete_removes_it_once(store: ResponseStore) -> None:
    await store.put(resp("resp_1"))
    assert await store.delete("acme", "resp_1") is True
    assert await store.get("acme", "resp_1") is None
    assert await store.delete("acme", "resp_1") is False


async def test_expired_is_gone_for_every_read_at_once_and_purge_deletes_it(
        stores: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    store = stores(clock=clock)
    await store.put(resp("resp_old", expires_at=NOW + 60))
    await store.put(resp("resp_new", expires_at=NOW + 3600))
    await store.put(resp("resp_kept", expires_at=None))
    assert await store.get("acme", "resp_old") is not None
    clock.t = NOW + 60
    assert await store.get("acme", "resp_old") is None
    assert await store.chain("acme", "resp_old") is None
    assert await store.input_items("acme", "resp_old", after=None, before=None, limit=20,
                                   order="desc") is None
    assert await store.delete("acme", "resp_old") is False
    assert await store.purge_expired() == 1
    assert await store.purge_expired() == 0
    clock.t = NOW  # the row itself is gone, not merely hidden
    assert await store.get("acme", "resp_old") is None
    assert await store.get("acme", "resp_new") is not None
    assert await store.get("acme", "resp_kept") is not None


async def test_purge_takes_a_backlog_larger_than_one_batch(
        stores: Callable[..., ResponseStore]) -> None:
    store = stores(clock=Clock())
    await asyncio.gather(*(store.put(resp(f"resp_{i}", expires_at=NOW - 1))
                           for i in range(1203)))
    assert await store.purge_expired() == 1203


async def put_chain(store: ResponseStore, n: int, tenant: str = "acme") -> list[str]:
    ids, prev = [], None
    for i in range(1, n + 1):
        await store.put(resp(f"resp_{tenant}_{i}", tenant, prev))
        prev = f"resp_{tenant}_{i}"
        ids.append(prev)
    return ids


async def test_chain_across_five_turns_is_oldest_first(store: ResponseStore) -> None:
    ids = await put_chain(store, 5)
    chain = await store.chain("acme", ids[-1])
    assert chain is not None and [c.id for c in chain] == ids
    assert chain[0].input_items == [{"role": "user", "content": f"q {ids[0]}"}]
    assert chain[2] == await store.get("acme", ids[2])
    mid = await store.chain("acme", ids[2])
    assert mid is not None and [c.id for c in mid] == ids[:3]


async def test_chain_stops_at_a_deleted_link(store: ResponseStore) -> None:
    ids = await put_chain(store, 5)
    await store.delete("acme", ids[2])
    chain = await store.chain("acme", ids[4])
    assert chain is not None and [c.id for c in chain] == ids[3:]
    assert await store.chain("acme", ids[2]) is None


async def test_chain_stops_at_an_expired_link(stores: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    store = stores(clock=clock)
    await store.put(resp("resp_1", expires_at=NOW + 10))
    await store.put(resp("resp_2", prev="resp_1"))
    clock.t = NOW + 10
    assert [c.id for c in await store.chain("acme", "resp_2") or []] == ["resp_2"]


async def test_chain_never_crosses_into_another_tenant(store: ResponseStore) -> None:
    await store.put(resp("resp_a1", "acme"))
    await store.put(resp("resp_b1", "beta", prev="resp_a1"))
    assert [c.id for c in await store.chain("beta", "resp_b1") or []] == ["resp_b1"]


async def test_chain_keeps_the_newest_max_turns(store: ResponseStore) -> None:
    ids = await put_chain(store, 5)
    chain = await store.chain("acme", ids[-1], max_turns=2)
    assert chain is not None and [c.id for c in chain] == ids[3:]
    assert await store.chain("acme", "resp_missing") is None


async def test_input_items_pages(store: ResponseStore) -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "one"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}",
         "id": "fc_client"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"role": "user", "content": [{"type": "input_text", "text": "four"}]},
        {"role": "developer", "content": "five"}]
    await store.put(resp("resp_1", items=items))

    async def ids(**kw: Any) -> tuple[list[str], bool]:
        args: dict[str, Any] = {"after": None, "before": None, "limit": 20, "order": "desc",
                                **kw}
        got = await store.input_items("acme", "resp_1", **args)
        assert got is not None
        return [i["id"] for i in got[0]], got[1]

    every, more = await ids(order="asc")
    assert not more and len(every) == 5 and every[1] == "fc_client"
    assert every[0].startswith("msg_") and every[2].startswith("fc_")
    assert len(set(every)) == 5
    assert await ids() == (every[::-1], False)
    assert await ids(limit=2) == ([every[4], every[3]], True)
    assert await ids(limit=2, after=every[3]) == ([every[2], every[1]], True)
    assert await ids(limit=2, after=every[1]) == ([every[0]], False)
    assert await ids(limit=2, order="asc", after=every[1]) == (every[2:4], True)
    assert await ids(limit=2, before=every[1]) == ([every[3], every[2]], True)
    assert await ids(limit=5, order="asc", after=every[0], before=every[3]) == (every[1:3],
                                                                                False)
    with pytest.raises(InvalidRequest) as e:
        await ids(after="msg_unknown")
    assert e.value.param == "after"
    # What get() gives back is still what the client sent (no made-up ids).
    got = await store.get("acme", "resp_1")
    assert got is not None and got.input_items == items
    assert await store.input_items("acme", "resp_none", after=None, before=None, limit=20,
                                   order="desc") is None


async def test_concurrent_puts_from_two_stores_all_land(
        stores: Callable[..., ResponseStore]) -> None:
    # Two stores are two replicas (or processes) on one database, four writer threads each:
    # SQLite's busy timeout and PostgreSQL's row locks make them take turns, none fails.
    a, b = stores(workers=4), stores(workers=4)
    await asyncio.gather(a.start(), b.start())
    await asyncio.gather(*(s.put(resp(f"resp_{i}")) for i in range(60)
                           for s in [(a, b)[i % 2]]))
    found = await asyncio.gather(*(b.get("acme", f"resp_{i}") for i in range(60)))
    assert all(r is not None and r.id == f"resp_{i}" for i, r in enumerate(found))


async def test_from_policy_keeps_the_table_beside_the_ledgers(
        db: tuple[str, str | None]) -> None:
    url, schema = db
    policy = Policy.model_validate({"ledger": {"url": url, "schema": schema}})
    store = ResponseStore.from_policy(policy)
    ledger = open_ledger(url, schema)
    try:
        await store.start()
        ledger.connect()
        await store.put(resp("resp_1"))
        assert await store.get("acme", "resp_1") is not None
        if url.startswith("sqlite"):
            lite = sqlite3.connect(url.removeprefix("sqlite:///"))
            names = {r[0] for r in lite.execute("SELECT name FROM sqlite_master")}
            lite.close()
        else:
            with psycopg.connect(PG_URL) as conn:
                names = {r[0] for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (schema,))}
        assert {"stored_responses", "requests"} <= names
    finally:
        ledger.close()
        await store.close()


# ---- a database that is down ------------------------------------------------------------------

async def eventually(fn: Callable[[], Any], deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await fn()
        except StoreUnavailable:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy().up()
    yield p
    p.down()


async def test_postgres_going_down_raises_store_unavailable_then_recovers(
        pg_schema: str, proxy: TcpProxy) -> None:
    store = ResponseStore(proxy.url(), pg_schema, reconnect_backoff_s=0)
    try:
        await store.start()
        await store.put(resp("resp_1"))
        proxy.down()
        with pytest.raises(StoreUnavailable):
            await store.put(resp("resp_2"))
        # Reads raise too: "the database is down" must not look like "no such response".
        with pytest.raises(StoreUnavailable):
            await store.get("acme", "resp_1")
        with pytest.raises(StoreUnavailable):
            await store.chain("acme", "resp_1")
        proxy.up()
        await eventually(lambda: store.put(resp("resp_2", prev="resp_1")))
        chain = await eventually(lambda: store.chain("acme", "resp_2"))
        assert [c.id for c in chain] == ["resp_1", "resp_2"]
    finally:
        await store.close()


async def test_postgres_down_at_start_is_not_fatal(pg_schema: str) -> None:
    store = ResponseStore(DEAD_PG_URL, pg_schema)
    try:
        await store.start()
        with pytest.raises(StoreUnavailable):
            await store.put(resp("resp_1"))
        with pytest.raises(StoreUnavailable):
            await store.get("acme", "resp_1")
    finally:
        await store.close()


async def test_sqlite_unusable_raises_then_is_retried_at_the_next_call(tmp_path: Path) -> None:
    blocker = tmp_path / "var"
    blocker.write_text("a file where the database's folder should be")
    store = ResponseStore(f"sqlite:///{blocker}/ledger.db", reconnect_backoff_s=0)
    try:
        await store.start()
        with pytest.raises(StoreUnavailable):
            await store.put(resp("resp_1"))
        with pytest.raises(StoreUnavailable):
            await store.get("acme", "resp_1")
        blocker.unlink()
        await store.put(resp("resp_1"))
        assert await store.get("acme", "resp_1") is not None
    finally:
        await store.close()


async def test_after_a_failed_connect_calls_fail_fast_until_the_backoff_ends(
        tmp_path: Path) -> None:
    blocker = tmp_path / "var"
    blocker.write_text("x")
    store = ResponseStore(f"sqlite:///{blocker}/ledger.db", reconnect_backoff_s=3600)
    try:
        with pytest.raises(StoreUnavailable):
            await store.put(resp("resp_1"))
        blocker.unlink()  # fixed, but within the backoff no connection is tried
        with pytest.raises(StoreUnavailable, match="retried"):
            await store.put(resp("resp_1"))
    finally:
        await store.close()


async def test_logs_name_the_outage_once_and_never_stored_content(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "the-secret-prompt-text"
    blocker = tmp_path / "var"
    blocker.write_text("x")
    store = ResponseStore(f"sqlite:///{blocker}/ledger.db", reconnect_backoff_s=0)
    try:
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as e:
                await store.put(resp("resp_1", items=[{"role": "user", "content": secret}]))
            assert secret not in str(e.value)
        blocker.unlink()
        await store.put(resp("resp_1", items=[{"role": "user", "content": secret}],
                             expires_at=0))
        assert await store.purge_expired() == 1
    finally:
        await store.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "response store unavailable" in warnings[0].getMessage()
    assert secret not in caplog.text
