"""KeyStore on a SQLite file and on PostgreSQL (fresh schema per test), and revocation seen by
a second Authenticator (another replica) through the store poll and through Redis pub/sub."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import redis

from gateway.auth import Authenticator, key_channel, publish_key_change
from gateway.errors import AuthError, NotFound, ServiceUnavailable
from gateway.keys import KeyStore, PostgresKeyStore, SqliteKeyStore, hash_key, open_key_store
from gateway.policy.tenants import TenantConfig

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
TENANTS = {"acme": TenantConfig.model_validate({"models": ["gpt"]}),
           "beta": TenantConfig()}

pytestmark = pytest.mark.asyncio


@pytest.fixture
def pg_schema() -> Iterator[str]:
    try:
        conn = psycopg.connect(PG, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as e:  # pragma: no cover - environment without PostgreSQL
        pytest.skip(f"PostgreSQL not reachable at {PG}: {e}")
    schema = f"gwtest_{uuid.uuid4().hex[:12]}"
    yield schema
    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], KeyStore]:
    """Opens a new connection to one database each call: one per "replica"."""
    if request.param == "sqlite":
        return lambda: open_key_store(f"sqlite:///{tmp_path}/ledger.db")
    schema = request.getfixturevalue("pg_schema")
    return lambda: open_key_store(PG, schema=schema)


@pytest_asyncio.fixture
async def stores(open_store: Callable[[], KeyStore]) -> AsyncIterator[Callable[[], KeyStore]]:
    made: list[KeyStore] = []

    def make() -> KeyStore:
        s = open_store()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


@pytest_asyncio.fixture
async def replicas(stores: Callable[[], KeyStore]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Authenticator] = []

    async def make(**kw: Any) -> Authenticator:
        auth = Authenticator(TENANTS, stores(), **kw)
        await auth.start()
        started.append(auth)
        return auth

    yield make
    for auth in started:
        await auth.close()


async def test_create_returns_the_key_once_and_stores_only_its_hash(
        stores: Callable[[], KeyStore], tmp_path: Path) -> None:
    store = stores()
    issued = await store.create("acme", "laptop")
    assert issued.key.startswith("gw-") and len(issued.key) >= 35
    r = issued.record
    assert r.hash == hash_key(issued.key)
    assert r.hint == f"{issued.key[:5]}***{issued.key[-2:]}"
    assert (r.tenant, r.name, r.revoked_at) == ("acme", "laptop", None)
    [listed] = await store.list("acme")
    assert listed.id == r.id and issued.key not in str(listed.public())
    assert "hash" not in listed.public()
    assert await store.list("beta") == []
    if isinstance(store, SqliteKeyStore):
        raw = (tmp_path / "ledger.db").read_bytes()
        wal = tmp_path / "ledger.db-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert issued.key.encode() not in raw
        assert sqlite3.connect(tmp_path / "ledger.db").execute(
            "SELECT count(*) FROM gateway_keys WHERE hash = ?", (r.hash,)).fetchone()[0] == 1


async def test_revoke_is_idempotent_and_unknown_ids_are_not_found(
        stores: Callable[[], KeyStore]) -> None:
    store = stores()
    issued = await store.create("acme")
    first = await store.revoke(issued.record.id)
    again = await store.revoke(issued.record.id)
    assert first.revoked_at is not None and again.revoked_at == first.revoked_at
    with pytest.raises(NotFound, match="gateway keys list"):
        await store.revoke("key_nope")


async def test_changes_since_returns_only_what_changed(stores: Callable[[], KeyStore]) -> None:
    store = stores()
    rev0, everything = await store.changes_since(0)
    assert everything == []
    a = await store.create("acme")
    b = await store.create("beta")
    rev, changed = await store.changes_since(rev0)
    assert [r.id for r in changed] == [a.record.id, b.record.id]
    assert await store.changes_since(rev) == (rev, [])
    await store.revoke(a.record.id)
    rev2, changed = await store.changes_since(rev)
    assert rev2 == rev + 1 and [r.id for r in changed] == [a.record.id]


async def test_second_replica_refuses_a_revoked_key_after_one_refresh(
        replicas: Callable[..., Any]) -> None:
    one = await replicas()
    two = await replicas()
    issued = await one.create_key("acme", "ci")
    await two.refresh()
    assert two.authenticate(issued.key).tenant == "acme"
    await one.revoke_key(issued.record.id)
    # The refresh loop runs every refresh_s (<= 1 s); one pass is what it takes.
    await two.refresh()
    with pytest.raises(AuthError, match="was revoked"):
        two.authenticate(issued.key)


async def test_second_replica_polls_revocations_by_itself(replicas: Callable[..., Any]) -> None:
    one = await replicas()
    two = await replicas(refresh_s=0.2)
    issued = await one.create_key("acme")
    await wait_until(lambda: accepts(two, issued.key))
    await one.revoke_key(issued.record.id)
    await wait_until(lambda: not accepts(two, issued.key))


async def test_expired_issued_key_is_refused(replicas: Callable[..., Any]) -> None:
    one = await replicas()
    issued = await one.create_key("acme", expires=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(AuthError, match="expired"):
        one.authenticate(issued.key)


async def test_redis_revocation_reaches_a_replica_without_the_store(
        replicas: Callable[..., Any]) -> None:
    prefix = f"gwtest:{uuid.uuid4().hex}:"
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except redis.RedisError as e:  # pragma: no cover
        pytest.skip(f"Redis not reachable: {e}")
    one = await replicas()
    two = await replicas(redis_url=REDIS, key_prefix=prefix, refresh_s=1.0)
    issued = await one.create_key("acme")
    await wait_until(lambda: accepts(two, issued.key))
    # Announced on the channel but not written to the store: only pub/sub can drop it.
    deadline = asyncio.get_running_loop().time() + 10
    while accepts(two, issued.key):
        await publish_key_change(REDIS, key_channel(prefix), f"revoke:{issued.record.id}")
        assert asyncio.get_running_loop().time() < deadline, "the revocation never arrived"
        await asyncio.sleep(0.05)


async def test_postgres_store_reconnects_after_the_server_drops_it(pg_schema: str) -> None:
    store = PostgresKeyStore(PG, schema=pg_schema)
    try:
        await store.create("acme")
        pid = store._conn.info.backend_pid
        with psycopg.connect(PG, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The call that finds the connection dead says so; the next one reconnects.
        with pytest.raises(ServiceUnavailable, match="key database"):
            await store.list()
        assert len(await store.list()) == 1
    finally:
        await store.close()


def accepts(auth: Authenticator, key: str) -> bool:
    try:
        auth.authenticate(key)
        return True
    except AuthError:
        return False


async def wait_until(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
