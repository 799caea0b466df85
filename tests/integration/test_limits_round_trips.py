"""One Redis round trip per request: a gateway with Redis limits (rpm, tpm, concurrency per
tenant and key, two budgets) and the PostgreSQL ledger sends each request's admission as one
round trip, and its settlement rides in the next request's admission instead of a round trip
of its own (gateway/limits/redis_batch.py). Counted by wrapping redis-py's asyncio connection
— every write to Redis is one round trip — so the count is exact, not timed.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.connection as rconn

from gateway.limits.redis import _lua
from gateway.routing.shared_view import _EXCHANGE
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.tenancy_support import (
    REDIS_URL,
    fake_provider,
    pg_schema,
    policy_key,
    redis_prefix,
    sdk,
    started,
    tenant_policy,
)

__all__ = ["pg_schema", "redis_prefix"]  # fixtures used by this module

KEY = policy_key("rt-1")
ADMIT = hashlib.sha1(_lua("admit.lua").encode()).hexdigest().encode()
SETTLE = hashlib.sha1(_lua("settle.lua").encode()).hexdigest().encode()
# Not per request: the routing view's periodic exchange, a new connection's handshake, the key
# store's revocation channel.
BACKGROUND = (hashlib.sha1(_EXCHANGE.encode()).hexdigest().encode(), b"HELLO", b"CLIENT",
              b"SUBSCRIBE", b"PING")


def _commands(packed: Any) -> list[bytes]:
    """The commands of one write as RESP arrays' leading bulk strings (name, first arg)."""
    blob = b"".join(bytes(p) for p in packed) if isinstance(packed, list) else bytes(packed)
    out = []
    for array in blob.split(b"\r\n*"):
        parts = array.split(b"\r\n")
        out.append(b" ".join(parts[2:5:2]))  # "EVALSHA <sha>"
    return out


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[bytes]]]:
    """The gateway thread's writes to Redis, each the list of its commands."""
    seen: list[list[bytes]] = []
    send = rconn.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.current_thread().name == "gateway":
            cmds = _commands(command)
            if not any(b in c for c in cmds for b in BACKGROUND):
                seen.append(cmds)
        await send(self, command, check_health)

    monkeypatch.setattr(rconn.AbstractConnection, "send_packed_command", counting)
    yield seen


def test_each_request_costs_one_round_trip(round_trips: list[list[bytes]], pg_schema: str,
                                           redis_prefix: str) -> None:
    fake = started(FakeOpenAI("rt"))
    tmp = Path(tempfile.mkdtemp(prefix="gw-rt-"))
    policy = tenant_policy(
        tmp, pg_schema, redis_prefix, {"rt": fake_provider(fake)},
        {"m": {"deployments": [{"provider": "rt", "model": "m",
                                "pricing": [{"input": "1", "output": "2"}]}]}},
        {"acme": {"keys": [KEY.entry()],
                  "limits": {"rpm": 10_000, "tpm": 10_000_000, "concurrency": 2},
                  "key_limits": {"rpm": 10_000, "concurrency": 2},
                  "budget": {"monthly_usd": "100", "daily_usd": "10", "alerts": [0.5]}}})
    gw = Gateway(policy, tmp=tmp).start()
    try:
        # No timer in this test: a settlement leaves with the next admission or at shutdown.
        # Were a request to wait for its own settlement, it would wait an hour (the SDK's
        # 30 s timeout fails the test first).
        gw.app.state.deps.limiter.settlements.window_s = 3600
        client = sdk(gw.base_url, KEY.key)
        round_trips.clear()  # start-up's own
        n = 6
        for i in range(2 * n):
            kw = {"stream": True} if i >= n else {}
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], **kw)
            if kw:
                assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        # One write per request; each carries its admission, and from the second on, the
        # previous request's settlement ahead of it.
        assert len(round_trips) == 2 * n, round_trips
        for i, cmds in enumerate(round_trips):
            assert cmds[-1] == b"EVALSHA " + ADMIT
            assert cmds[:-1] == ([b"EVALSHA " + SETTLE] if i else [])
    finally:
        gw.stop()
        fake.stop()
    # Shutdown sent the last settlement: no slot or budget hold is left behind.
    r = redis.Redis.from_url(REDIS_URL)
    try:
        assert round_trips[-1] == [b"EVALSHA " + SETTLE]
        for key in r.scan_iter(match=redis_prefix + "*", count=1000):
            if r.type(key) == b"zset":
                assert r.zcard(key) == 0, key
    finally:
        r.close()
