"""RedisLimiter against a real Redis: replicas share one set of limits, budgets stay bounded,
Redis outages follow on_redis_error. Each test uses a fresh key prefix and removes its keys.

Behaviour both backends must share runs against the memory backend too (one suite, every
implementation).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from gateway.call import Principal
from gateway.errors import BudgetExceeded, RateLimited, ServiceUnavailable
from gateway.limits.base import Estimate, Limiter, Reservation
from gateway.limits.budget import BudgetAlert, rebuild_budgets
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter, _Script
from gateway.policy.tenants import TenantConfig
from tests.integration.tenancy_support import fresh_prefix

REDIS = "redis://127.0.0.1:6379/0"
DEAD = "redis://127.0.0.1:1/0"
BOT = Principal("acme", "k1", key_name="ci-bot")

pytestmark = pytest.mark.asyncio


def tenants(cfg: dict[str, Any]) -> dict[str, TenantConfig]:
    return {"acme": TenantConfig.model_validate(cfg)}


def est(tokens: int = 10, cost: str = "0") -> Estimate:
    return Estimate(tokens, 0, Decimal(cost))


Make = Callable[..., Any]


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from fresh_prefix(REDIS)


@pytest_asyncio.fixture
async def redis_limiter(prefix: str) -> AsyncIterator[Make]:
    made: list[RedisLimiter] = []

    def make(cfg: dict[str, Any], **kw: Any) -> RedisLimiter:
        kw.setdefault("url", REDIS)
        lim = RedisLimiter(tenants(cfg), key_prefix=prefix, **kw)
        made.append(lim)
        return lim

    yield make
    for lim in made:
        await lim.close()


@pytest_asyncio.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Two "replicas" of one backend: for memory, the same object twice (one process)."""
    made: list[Any] = []
    prefix = request.getfixturevalue("prefix") if request.param == "redis" else ""

    def make(cfg: dict[str, Any], **kw: Any) -> tuple[Limiter, Limiter]:
        if request.param == "memory":
            m = MemoryLimiter(tenants(cfg), **kw)
            made.append(m)
            return m, m
        a = RedisLimiter(tenants(cfg), url=REDIS, key_prefix=prefix, **kw)
        b = RedisLimiter(tenants(cfg), url=REDIS, key_prefix=prefix, **kw)
        made.extend((a, b))
        return a, b

    yield make
    for lim in made:
        await lim.close()


async def try_admit(lim: Limiter, estimate: Estimate | None = None) -> Reservation | None:
    try:
        return await lim.admit(BOT, "gpt", estimate or est())
    except RateLimited:
        return None


async def burst(limiters: list[Limiter], n: int,
                estimate: Estimate | None = None) -> list[Reservation]:
    results = await asyncio.gather(*(try_admit(limiters[i % len(limiters)], estimate)
                                     for i in range(n)))
    return [r for r in results if r is not None]


# -- behaviour shared by both backends ---------------------------------------------------------

async def test_two_replicas_hold_a_tenant_to_its_rpm(backend: Make) -> None:
    a, b = backend({"limits": {"rpm": 10}})
    admitted = await burst([a, b], 40)
    # GCRA refills 1 request per 6 s; a burst that takes under 6 s gets at most one extra.
    assert 10 <= len(admitted) <= 11


async def test_two_replicas_hold_a_tenant_to_its_concurrency(backend: Make) -> None:
    a, b = backend({"limits": {"concurrency": 3}})
    admitted = await burst([a, b], 20)
    assert len(admitted) == 3
    await b.settle(admitted[0], 1, Decimal(0))
    assert len(await burst([a, b], 20)) == 1


async def test_refusal_message_and_headers(backend: Make) -> None:
    a, _ = backend({"key_limits": {"rpm": 2}})
    first = await a.admit(BOT, "gpt", est())
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await a.admit(BOT, "gpt", est())
    with pytest.raises(RateLimited) as e:
        await a.admit(BOT, "gpt", est())
    assert e.value.message.startswith(
        'Rate limit reached for key "ci-bot" (tenant "acme"): 2 requests per minute. Retry after ')
    assert 1 <= int(e.value.headers["retry-after"]) <= 30
    assert e.value.headers["x-ratelimit-remaining-requests"] == "0"


async def test_settle_refunds_unused_tokens(backend: Make) -> None:
    a, b = backend({"limits": {"tpm": 1000}})
    r = await a.admit(BOT, "gpt", est(600))
    assert await try_admit(b, est(600)) is None
    await b.settle(r, 100, Decimal(0))
    assert await try_admit(a, est(600)) is not None


async def test_budget_blocks_past_the_limit_and_allow_flags(backend: Make) -> None:
    a, b = backend({"budget": {"monthly_usd": "1", "on_exceed": "block"}})
    r = await a.admit(BOT, "gpt", est(cost="0.8"))
    with pytest.raises(BudgetExceeded, match=r"monthly budget of \$1\.00"):
        await b.admit(BOT, "gpt", est(cost="0.3"))
    await b.settle(r, 1, Decimal("0.5"))
    await a.admit(BOT, "gpt", est(cost="0.3"))


async def test_budget_allow_admits_and_flags(backend: Make) -> None:
    a, b = backend({"budget": {"monthly_usd": "1", "on_exceed": "allow"}})
    ok = await a.admit(BOT, "gpt", est(cost="0.8"))
    assert "x-gateway-budget-exceeded" not in ok.headers
    over = await b.admit(BOT, "gpt", est(cost="0.3"))
    assert over.headers["x-gateway-budget-exceeded"] == "true"


async def test_budget_race_overshoots_by_at_most_the_documented_bound(backend: Make) -> None:
    # 50 concurrent admissions from two replicas against $0.05 left, each reserving $0.01
    # and then costing $0.012: overshoot <= requests in flight at the last admission x $0.002.
    a, b = backend({"limits": {"concurrency": 10},
                    "budget": {"monthly_usd": "1.00", "on_exceed": "block"}})
    await rebuild_budgets(a, {"acme": (Decimal("0.95"), Decimal(0))})

    async def one(lim: Limiter) -> bool:
        try:
            r = await lim.admit(BOT, "gpt", est(cost="0.01"))
        except (RateLimited, BudgetExceeded):
            return False
        await asyncio.sleep(0)
        await lim.settle(r, 1, Decimal("0.012"))
        return True

    admitted = sum(await asyncio.gather(*(one((a, b)[i % 2]) for i in range(50))))
    [month] = await a.budget_status("acme")  # type: ignore[attr-defined]
    assert admitted <= 5  # never more than the worst cases that fit
    assert month.spent_usd == Decimal("0.95") + admitted * Decimal("0.012")
    assert month.spent_usd <= Decimal("1.00") + 10 * Decimal("0.002")
    assert month.reserved_usd == 0


async def test_budget_race_without_underestimates_never_overshoots(backend: Make) -> None:
    a, b = backend({"budget": {"monthly_usd": "1.00"}})
    await rebuild_budgets(b, {"acme": (Decimal("0.95"), Decimal(0))})
    held = await asyncio.gather(*(a.admit(BOT, "gpt", est(cost="0.01")) if i % 2 else
                                  b.admit(BOT, "gpt", est(cost="0.01")) for i in range(50)),
                                return_exceptions=True)
    ok = [r for r in held if isinstance(r, Reservation)]
    assert len(ok) == 5
    assert all(isinstance(r, BudgetExceeded) for r in held if not isinstance(r, Reservation))
    for r in ok:
        await a.settle(r, 1, Decimal("0.01"))
    [month] = await b.budget_status("acme")  # type: ignore[attr-defined]
    assert month.spent_usd == Decimal("1.00")


async def test_alert_fires_once_across_replicas(backend: Make) -> None:
    seen: list[BudgetAlert] = []
    a, b = backend({"budget": {"monthly_usd": "10", "alerts": [0.5]}},
                   on_budget_alert=seen.append)
    for lim in (a, b, a):
        r = await lim.admit(BOT, "gpt", est(cost="1"))
        await lim.settle(r, 1, Decimal("3"))
    assert [(x.threshold, x.spent_usd) for x in seen] == [(0.5, Decimal(6))]


# -- Redis only ------------------------------------------------------------------------------

_PROCESS = """
import asyncio, json, sys
import redis.asyncio as aioredis
from decimal import Decimal
from gateway.call import Principal
from gateway.errors import RateLimited
from gateway.limits.base import Estimate
from gateway.limits.redis import RedisLimiter
from gateway.policy.tenants import TenantConfig

async def main(prefix, n):
    lim = RedisLimiter({"acme": TenantConfig.model_validate({"limits": {"rpm": 10}})},
                       url="redis://127.0.0.1:6379/0", key_prefix=prefix)
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    await client.rpush(prefix + "ready", "1")
    await client.blpop([prefix + "go"], timeout=30)
    async def one():
        try:
            await lim.admit(Principal("acme", "k1"), "gpt", Estimate(1, 0))
            return 1
        except RateLimited:
            return 0
    print(json.dumps(sum(await asyncio.gather(*(one() for _ in range(n))))))
    await lim.close()
    await client.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_two_processes_hold_a_tenant_to_its_rpm(prefix: str,
                                                      redis_limiter: Make) -> None:
    lim = redis_limiter({"limits": {"rpm": 10}})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PROCESS, prefix, "20",
                                                stdout=subprocess.PIPE)
    client = aioredis.Redis.from_url(REDIS)
    try:
        # The other process signals it is connected; then both bursts start together.
        assert await client.blpop([prefix + "ready"], timeout=30) is not None
        await client.rpush(prefix + "go", "1")
        here = len(await burst([lim], 20))
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
        await client.aclose()
    there = json.loads(out)
    assert 10 <= here + there <= 11


async def test_concurrency_lease_expires_when_a_replica_dies(redis_limiter: Make) -> None:
    dead = redis_limiter({"limits": {"concurrency": 1}}, lease_s=0.3)
    alive = redis_limiter({"limits": {"concurrency": 1}}, lease_s=0.3)
    await dead.admit(BOT, "gpt", est())  # never settled
    assert await try_admit(alive) is None
    deadline = asyncio.get_running_loop().time() + 10
    while (r := await try_admit(alive)) is None:
        assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    assert r.headers == {}


async def test_budget_hold_of_a_dead_replica_expires(redis_limiter: Make) -> None:
    dead = redis_limiter({"budget": {"monthly_usd": "1"}}, lease_s=0.3)
    alive = redis_limiter({"budget": {"monthly_usd": "1"}}, lease_s=0.3)
    await dead.admit(BOT, "gpt", est(cost="1"))
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            await alive.admit(BOT, "gpt", est(cost="0.5"))
            break
        except BudgetExceeded:
            assert asyncio.get_running_loop().time() < deadline, "the hold never expired"
            await asyncio.sleep(0.05)


async def test_fail_open_admits_unlimited_and_counts(redis_limiter: Make) -> None:
    errors: list[str] = []
    lim = redis_limiter({"limits": {"rpm": 1}, "budget": {"monthly_usd": "1"}}, url=DEAD,
                        on_redis_error="fail_open",
                        on_store_error=lambda op, exc: errors.append(op))
    for _ in range(3):
        r = await lim.admit(BOT, "gpt", est(cost="5"))
        assert r.headers == {}
        await lim.settle(r, 10, Decimal("5"))  # must not raise either
    assert lim.degraded_admissions == 3
    # The first failure opens a 1 s window with no Redis calls; settles still try.
    assert errors[0] == "admit" and lim.redis_errors == len(errors) >= 2


async def test_fail_closed_refuses_with_503(redis_limiter: Make) -> None:
    lim = redis_limiter({"limits": {"rpm": 100}}, url=DEAD, on_redis_error="fail_closed")
    with pytest.raises(ServiceUnavailable) as e:
        await lim.admit(BOT, "gpt", est())
    assert e.value.status == 503 and "fail_closed" in e.value.message
    assert lim.redis_errors == 1
    with pytest.raises(ServiceUnavailable):
        await lim.admit(BOT, "gpt", est())


async def test_a_shared_pipeline_that_fails_decides_each_admission(redis_limiter: Make
                                                                   ) -> None:
    # Three admissions of one turn share one pipeline to a Redis that is down: each of them
    # is refused as a lone one would be, none hangs or is admitted unchecked.
    lim = redis_limiter({"limits": {"rpm": 100}}, url=DEAD, on_redis_error="fail_closed")
    got = await asyncio.gather(*(lim.admit(BOT, "gpt", est()) for _ in range(3)),
                               return_exceptions=True)
    assert all(isinstance(g, ServiceUnavailable) and g.status == 503 for g in got), got
    assert lim.settlements.round_trips == 1  # they did share it


async def test_noscript_loads_the_script_and_retries(redis_limiter: Make) -> None:
    lim = redis_limiter({"limits": {"rpm": 5}})
    # A script Redis has never seen (unique text): EVALSHA answers NOSCRIPT first.
    script = _Script(lim._redis, lim._admit.source + f"\n-- {uuid.uuid4().hex}\n")
    script.sha = "0" * 40
    lim._admit = script
    r = await lim.admit(BOT, "gpt", est())
    assert r.headers["x-ratelimit-remaining-requests"] == "4"
    assert script.sha != "0" * 40


async def test_rebuild_never_lowers_the_shared_spend(redis_limiter: Make) -> None:
    lim = redis_limiter({"budget": {"monthly_usd": "10", "daily_usd": "5"}})
    r = await lim.admit(BOT, "gpt", est(cost="1"))
    await lim.settle(r, 1, Decimal("3"))

    def ledger() -> dict[str, tuple[Decimal, Decimal]]:
        return {"acme": (Decimal("2"), Decimal("4"))}

    await rebuild_budgets(lim, ledger)
    month, day = await lim.budget_status("acme")
    assert (month.spent_usd, day.spent_usd) == (Decimal(3), Decimal(4))


async def test_an_admission_cancelled_midway_leaks_no_slot(redis_limiter: Make) -> None:
    lim = redis_limiter({"limits": {"concurrency": 1}})
    for spins in range(4):  # cancel at different points of the round trip
        task = asyncio.create_task(lim.admit(BOT, "gpt", est()))
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        try:
            r = await task
            await lim.settle(r, 1, Decimal(0))  # it finished before the cancel landed
        except asyncio.CancelledError:
            pass
        deadline = asyncio.get_running_loop().time() + 10
        while (r := await try_admit(lim)) is None:
            assert asyncio.get_running_loop().time() < deadline, "the cancelled slot leaked"
            await asyncio.sleep(0.01)
        await lim.settle(r, 1, Decimal(0))


async def test_open_tenants_never_touch_redis(redis_limiter: Make) -> None:
    lim = redis_limiter({}, url=DEAD, on_redis_error="fail_closed")
    r = await lim.admit(BOT, "gpt", est())
    assert r.handle is None and lim.redis_errors == 0



async def test_settlements_ride_in_the_next_admission(redis_limiter: Make) -> None:
    # A window no test outlives: only an admission (or close) can carry the settlement.
    lim = redis_limiter({"limits": {"concurrency": 1}}, settle_window_s=3600)
    r = await lim.admit(BOT, "gpt", est())
    settling = asyncio.create_task(lim.settle(r, 1, Decimal(0)))
    await asyncio.sleep(0)
    assert lim.settlements.pending == 1 and not settling.done()
    # The queued settlement goes ahead of this admission in one round trip: its slot is free.
    r2 = await lim.admit(BOT, "gpt", est())
    assert r2.handle is not None and lim.settlements.pending == 0
    await settling
    assert lim.settlements.round_trips == 1
    settling = asyncio.create_task(lim.settle(r2, 1, Decimal(0)))
    await asyncio.sleep(0)
    await lim.settlements.close()  # shutdown sends what is queued without the window
    await settling
    assert await try_admit(lim) is not None


async def test_admissions_of_one_turn_share_a_round_trip(redis_limiter: Make,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import redis.asyncio.connection as rconn

    writes = []
    send = rconn.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        writes.append(command)
        await send(self, command, check_health)

    # A window no test outlives: the settlements can only leave with the admissions.
    lim = redis_limiter({"limits": {"concurrency": 2}}, settle_window_s=3600)
    held = [await lim.admit(BOT, "gpt", est()) for _ in range(2)]
    assert lim.settlements.round_trips == 0  # alone, an admission is a plain EVALSHA
    settling = [asyncio.create_task(lim.settle(r, 1, Decimal(0))) for r in held]
    await asyncio.sleep(0)
    assert lim.settlements.pending == 2
    # Three admissions made in the same turn: one pipeline, the two settlements ahead of
    # them, so two slots are free and the third admission is refused, as one by one.
    monkeypatch.setattr(rconn.AbstractConnection, "send_packed_command", counting)
    got = await asyncio.gather(*(try_admit(lim) for _ in range(3)))
    monkeypatch.undo()
    assert len(writes) == 1  # one write to Redis for all five scripts
    assert lim.settlements.round_trips == 1 and lim.settlements.pending == 0
    assert sum(r is not None for r in got) == 2
    await asyncio.gather(*settling)


async def test_settlements_leave_by_the_timer_when_no_admission_comes(redis_limiter: Make
                                                                     ) -> None:
    lim = redis_limiter({"limits": {"concurrency": 3}})
    held = [await lim.admit(BOT, "gpt", est()) for _ in range(3)]
    await asyncio.gather(*(lim.settle(r, 1, Decimal(0)) for r in held))
    assert lim.settlements.round_trips == 1  # three settlements, one pipeline
    assert all([await try_admit(lim) for _ in range(3)])


async def test_a_batch_reloads_scripts_redis_lost(redis_limiter: Make) -> None:
    lim = redis_limiter({"limits": {"concurrency": 1}}, settle_window_s=3600)
    lost = []
    for s in (lim._admit, lim._settle):  # scripts Redis has never seen: NOSCRIPT first
        script = _Script(lim._redis, s.source + f"\n-- {uuid.uuid4().hex}\n")
        script.sha = "0" * 40
        lost.append(script)
    lim._admit = lost[0]
    r = await lim.admit(BOT, "gpt", est())
    lim.settlements._script = lost[1]
    settling = asyncio.create_task(lim.settle(r, 1, Decimal(0)))
    await asyncio.sleep(0)
    lost[0].sha = "0" * 40
    assert (await lim.admit(BOT, "gpt", est())).handle is not None
    await settling
    assert all(s.sha != "0" * 40 for s in lost)
