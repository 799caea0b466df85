"""`ResponseStore.put_later` on a real SQLite file and PostgreSQL schema: a response put is
readable on this replica at once, reaches the database (another replica) in batches, keeps a
batch the database refused and writes it once it is back, and `close` writes what is held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from gateway.conversation import ResponseStore
from tests.integration import test_conversation_store as base
from tests.integration.test_conversation_store import NOW, Clock, resp
from tests.unit.accounting.factories import TcpProxy

# The store suite's fixtures: a fresh SQLite file and PostgreSQL schema per test.
db, stores, pg_schema, proxy = base.db, base.stores, base.pg_schema, base.proxy
pytestmark = pytest.mark.asyncio


async def test_put_later_is_read_here_at_once_and_elsewhere_after_its_batch(
        stores: Callable[..., ResponseStore]) -> None:
    here, elsewhere = stores(clock=Clock()), stores(clock=Clock())
    await here.start()
    await elsewhere.start()
    here.put_later(resp("resp_1"))
    here.put_later(resp("resp_2", prev="resp_1"))
    # No await between the put and these reads: nothing can have been written yet.
    assert here.pending == 2
    assert await here.get("acme", "resp_2") == resp("resp_2", prev="resp_1")
    assert [c.id for c in await here.chain("acme", "resp_2") or []] == ["resp_1", "resp_2"]
    page = await here.input_items("acme", "resp_2", after=None, before=None, limit=20,
                                  order="asc")
    assert page is not None and page[0][0]["content"][0]["text"] == "q resp_2"
    assert await here.get("beta", "resp_2") is None  # another tenant's, as in the database
    assert await here.flush(10.0)
    assert here.pending == 0
    assert [c.id for c in await elsewhere.chain("acme", "resp_2") or []] == ["resp_1", "resp_2"]


async def test_a_chain_goes_on_from_what_is_held_into_the_database(
        stores: Callable[..., ResponseStore]) -> None:
    store = stores(clock=Clock())
    await store.start()
    for i in range(1, 4):
        await store.put(resp(f"resp_{i}", prev=f"resp_{i - 1}" if i > 1 else None))
    store.put_later(resp("resp_4", prev="resp_3"))
    store.put_later(resp("resp_5", prev="resp_4"))
    chain = await store.chain("acme", "resp_5")
    assert [c.id for c in chain or []] == [f"resp_{i}" for i in range(1, 6)]
    # max_turns counts the held turns and the stored ones alike (the newest are kept).
    assert [c.id for c in await store.chain("acme", "resp_5", 3) or []] == \
        ["resp_3", "resp_4", "resp_5"]
    assert [c.id for c in await store.chain("acme", "resp_5", 1) or []] == ["resp_5"]


async def test_many_puts_at_once_all_land(stores: Callable[..., ResponseStore]) -> None:
    store, reader = stores(), stores()
    await store.start()
    for i in range(300):
        store.put_later(resp(f"resp_{i}"))
        if i % 50 == 0:
            await asyncio.sleep(0)  # let a batch start while more arrive
    assert await store.flush(30.0)
    for i in (0, 149, 299):
        assert await reader.get("acme", f"resp_{i}") is not None


async def test_delete_of_a_held_response_removes_it_everywhere(
        stores: Callable[..., ResponseStore]) -> None:
    store = stores()
    await store.start()
    store.put_later(resp("resp_1"))
    assert await store.delete("acme", "resp_1")
    assert await store.get("acme", "resp_1") is None
    assert await store.flush(10.0)
    assert await store.get("acme", "resp_1") is None
    assert not await store.delete("acme", "resp_1")


async def test_expiry_applies_to_held_responses(stores: Callable[..., ResponseStore]) -> None:
    clock = Clock()
    store = stores(clock=clock)
    await store.start()
    store.put_later(replace(resp("resp_1"), expires_at=NOW + 10))
    assert await store.get("acme", "resp_1") is not None
    clock.t = NOW + 10
    assert await store.get("acme", "resp_1") is None
    assert await store.chain("acme", "resp_1") is None


async def test_close_writes_what_is_held(stores: Callable[..., ResponseStore],
                                         db: tuple[str, str | None]) -> None:
    store = ResponseStore(db[0], db[1])
    await store.start()
    store.put_later(resp("resp_1"))
    await store.close()
    reader = stores()
    assert await reader.get("acme", "resp_1") is not None


async def test_a_batch_the_database_refused_is_kept_and_written_when_it_is_back(
        pg_schema: str, proxy: TcpProxy) -> None:
    store = ResponseStore(proxy.url(), pg_schema, reconnect_backoff_s=0.05)
    try:
        await store.start()
        await store.put(resp("resp_1"))
        proxy.down()
        store.put_later(resp("resp_2", prev="resp_1"))
        assert not await store.flush(0.5)  # the database is down: still held
        assert store.pending == 1
        assert await store.get("acme", "resp_2") is not None  # and still read here
        proxy.up()
        assert await store.flush(20.0)
        reader = ResponseStore(proxy.url(), pg_schema)
        try:
            assert [c.id for c in await reader.chain("acme", "resp_2") or []] == \
                ["resp_1", "resp_2"]
        finally:
            await reader.close()
    finally:
        await store.close()
