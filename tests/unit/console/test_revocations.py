"""Signed-out console sessions: remembered until the cookie's expiry, in memory or Redis; an
unreachable Redis refuses (503) rather than pass a possibly signed-out cookie; memory-mode
cookies name the process's boot id."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway.console.revocations import MemoryRevocations, RedisRevocations
from gateway.console.session import SessionSigner
from gateway.errors import AuthError, ServiceUnavailable
from gateway.keys import hash_key
from tests.integration.tenancy_support import REDIS_URL

ADMIN = "gw-admin-test-key-0123456789"


@pytest.mark.asyncio
async def test_memory_remembers_a_sign_out() -> None:
    r = MemoryRevocations()
    assert not await r.is_revoked("s1")
    await r.revoke("s1", time.time() + 60)
    assert await r.is_revoked("s1") and not await r.is_revoked("s2")


@pytest.mark.asyncio
async def test_redis_shares_a_sign_out_until_the_cookie_expires() -> None:
    prefix = f"gwtest:{uuid.uuid4().hex[:8]}:"
    a, b = RedisRevocations(REDIS_URL, prefix), RedisRevocations(REDIS_URL, prefix)
    try:
        await a.revoke("s1", time.time() + 60)
        assert await b.is_revoked("s1") and not await b.is_revoked("s2")
        ttl = await b._redis.ttl(prefix + "console:signed_out:s1")
        assert 0 < ttl <= 62  # kept as long as the cookie could be presented, not forever
    finally:
        await a._redis.aclose()
        await b._redis.aclose()


@pytest.mark.asyncio
async def test_an_unreachable_redis_refuses_rather_than_guess() -> None:
    r = RedisRevocations("redis://127.0.0.1:9/0", "gw:")
    with pytest.raises(ServiceUnavailable):
        await r.is_revoked("s1")
    with pytest.raises(ServiceUnavailable):
        await r.revoke("s1", time.time() + 60)
    await r._redis.aclose()


def test_a_cookie_from_another_boot_is_refused_in_memory_mode() -> None:
    before = SessionSigner(ADMIN, epoch=MemoryRevocations().epoch)
    after = SessionSigner(ADMIN, epoch=MemoryRevocations().epoch)
    cookie = before.issue("admin", hash_key(ADMIN), None, 60)
    assert before.verify(cookie).kind == "admin"
    with pytest.raises(AuthError) as e:
        after.verify(cookie)
    assert e.value.code == "bad_session"
    # With Redis (no epoch) every replica and restart verifies it.
    shared = SessionSigner(ADMIN).issue("admin", hash_key(ADMIN), None, 60)
    assert SessionSigner(ADMIN).verify(shared).kind == "admin"


@pytest.mark.asyncio
async def test_closing_the_console_lets_go_of_its_redis_connection() -> None:
    import redis.asyncio as aioredis

    from gateway.console.web import ConsoleWeb

    class _State:
        redis_url, key_prefix = REDIS_URL, f"gwtest:{uuid.uuid4().hex[:8]}:"

    class _Policy:
        state = _State()

    web = ConsoleWeb(lambda: _Policy(), None, None)  # type: ignore[arg-type]
    store = web.revocations()
    assert isinstance(store, RedisRevocations)
    assert not await store.is_revoked("s1")
    conn_id = await store._redis.client_id()  # the pool reuses the connection just used
    other = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await other.execute_command("CLIENT", "LIST", "ID", conn_id)
        await web.close()
        assert web._revocations is None
        assert not await other.execute_command("CLIENT", "LIST", "ID", conn_id)
    finally:
        await other.aclose()
