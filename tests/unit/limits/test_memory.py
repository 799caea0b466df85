"""MemoryLimiter: GCRA windows, concurrency leases, settlement, on an injected clock."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.call import ANONYMOUS, Principal
from gateway.errors import RateLimited
from gateway.limits.rules import Hold
from tests.unit.limits.clock import BOT, Clock, est, limiter, tenants

pytestmark = pytest.mark.asyncio


async def test_rpm_admits_the_limit_then_refuses_until_one_interval_refills() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"limits": {"rpm": 3}})
    for remaining in ("2", "1", "0"):
        r = await lim.admit(BOT, "gpt", est())
        assert r.headers["x-ratelimit-remaining-requests"] == remaining
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est())
    assert e.value.status == 429
    assert e.value.type == "rate_limit_exceeded"
    assert e.value.message == ('Rate limit reached for tenant "acme": 3 requests per minute. '
                               "Retry after 20 s.")
    assert e.value.headers["retry-after"] == "20"
    assert e.value.headers["x-ratelimit-limit-requests"] == "3"
    assert e.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.value.headers["x-ratelimit-reset-requests"] == "1m0s"

    clock.advance(19.9)
    with pytest.raises(RateLimited):
        await lim.admit(BOT, "gpt", est())
    clock.advance(0.1)
    await lim.admit(BOT, "gpt", est())


async def test_any_sixty_seconds_admit_at_most_limit_plus_what_refilled() -> None:
    # The GCRA bound: over a span of t seconds at most limit + limit * t / 60 requests.
    clock = Clock()
    lim = limiter(clock, acme={"limits": {"rpm": 6}})
    admitted = 0
    for _ in range(600):  # one attempt every 0.1 s for a minute
        try:
            await lim.admit(BOT, "gpt", est())
            admitted += 1
        except RateLimited:
            pass
        clock.advance(0.1)
    assert admitted <= 6 + 6


async def test_key_limit_message_names_key_and_tenant() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"key_limits": {"rpm": 60}, "limits": {"rpm": 1000}})
    for _ in range(60):
        await lim.admit(BOT, "gpt", est())
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est())
    assert e.value.message == ('Rate limit reached for key "ci-bot" (tenant "acme"): '
                               "60 requests per minute. Retry after 1 s.")
    # Another key of the same tenant has its own bucket.
    await lim.admit(Principal("acme", "k2"), "gpt", est())


async def test_policy_key_limits_replace_the_tenant_key_limits() -> None:
    clock = Clock()
    key = {"id": "k1", "hash": "sha256:" + "a" * 64, "limits": {"rpm": 1}}
    lim = limiter(clock, acme={"keys": [key], "key_limits": {"rpm": 50}})
    await lim.admit(BOT, "gpt", est())
    with pytest.raises(RateLimited, match='key "ci-bot"'):
        await lim.admit(BOT, "gpt", est())


async def test_model_limits_apply_to_that_model_only() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"model_limits": {"gpt": {"rpm": 1}}})
    await lim.admit(BOT, "gpt", est())
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est())
    assert 'model "gpt" (tenant "acme")' in e.value.message
    await lim.admit(BOT, "llama", est())


async def test_tpm_reserves_the_estimate_and_settle_refunds_the_unused_part() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"limits": {"tpm": 1000}})
    first = await lim.admit(BOT, "gpt", est(100, 300))
    assert first.headers["x-ratelimit-remaining-tokens"] == "600"
    await lim.admit(BOT, "gpt", est(100, 300))
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est(100, 300))
    assert "1000 tokens per minute" in e.value.message
    assert e.value.headers["x-ratelimit-remaining-tokens"] == "200"
    await lim.settle(first, 50, Decimal(0))  # used 50 of the 400 reserved
    third = await lim.admit(BOT, "gpt", est(100, 300))
    assert third.headers["x-ratelimit-remaining-tokens"] == "150"


async def test_usage_above_the_estimate_is_charged_as_debt() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"limits": {"tpm": 600}})
    r = await lim.admit(BOT, "gpt", est(10, 0))
    await lim.settle(r, 900, Decimal(0))  # 300 tokens more than the bucket holds
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est(10, 0))
    # 900 tokens at 10/s refill: the bucket is back to 10 free tokens after 31 s.
    assert e.value.headers["retry-after"] == "31"
    clock.advance(31)
    await lim.admit(BOT, "gpt", est(10, 0))


async def test_request_larger_than_the_tpm_limit_is_refused_as_too_large() -> None:
    lim = limiter(Clock(), acme={"key_limits": {"tpm": 1000}})
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est(200, 1000))
    assert e.value.message == (
        'Request too large for key "ci-bot" (tenant "acme"): it may use up to 1200 tokens '
        "(prompt + max_tokens), more than the limit of 1000 tokens per minute. Lower "
        "max_tokens or shorten the prompt.")


async def test_concurrency_slots_free_on_settle() -> None:
    lim = limiter(Clock(), acme={"limits": {"concurrency": 2}})
    a = await lim.admit(BOT, "gpt", est())
    await lim.admit(BOT, "gpt", est())
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est())
    assert e.value.message == ('Rate limit reached for tenant "acme": 2 concurrent requests. '
                               "Retry after 1 s.")
    assert e.value.headers["retry-after"] == "1"
    await lim.settle(a, 10, Decimal(0))
    await lim.admit(BOT, "gpt", est())


async def test_concurrency_lease_expires_when_never_settled() -> None:
    clock = Clock()
    lim = limiter(clock, lease_s=30, acme={"limits": {"concurrency": 1}})
    await lim.admit(BOT, "gpt", est())  # its replica "crashed": never settled
    with pytest.raises(RateLimited):
        await lim.admit(BOT, "gpt", est())
    clock.advance(30)
    await lim.admit(BOT, "gpt", est())


async def test_a_refusal_reserves_nothing() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"limits": {"rpm": 5, "concurrency": 1}})
    await lim.admit(BOT, "gpt", est())
    with pytest.raises(RateLimited) as e:
        await lim.admit(BOT, "gpt", est())
    # The refused request shows what the bucket holds, without itself.
    assert e.value.headers["x-ratelimit-remaining-requests"] == "4"
    assert e.value.headers["x-ratelimit-reset-requests"] == "12s"


async def test_settle_is_idempotent() -> None:
    lim = limiter(Clock(), acme={"limits": {"concurrency": 1, "tpm": 100}})
    r = await lim.admit(BOT, "gpt", est(50))
    await lim.settle(r, 10, Decimal(0))
    await lim.settle(r, 10, Decimal(0))
    assert r.settled
    again = await lim.admit(BOT, "gpt", est(50))
    assert again.headers["x-ratelimit-remaining-tokens"] == "40"


async def test_open_mode_and_unknown_tenants_are_unlimited_without_headers() -> None:
    lim = limiter(Clock(), acme={"limits": {"rpm": 1}})
    for _ in range(5):
        r = await lim.admit(ANONYMOUS, "gpt", est())
        assert r.headers == {} and r.handle is None
        await lim.settle(r, 1, Decimal(0))


async def test_policy_reload_keeps_counters() -> None:
    clock = Clock()
    lim = limiter(clock, acme={"limits": {"rpm": 2}})
    await lim.admit(BOT, "gpt", est())
    await lim.admit(BOT, "gpt", est())
    lim.update_tenants(tenants(acme={"limits": {"rpm": 2}, "budget": {"monthly_usd": 5}}))
    with pytest.raises(RateLimited):
        await lim.admit(BOT, "gpt", est())


async def test_handle_records_what_was_reserved() -> None:
    lim = limiter(Clock(), acme={"limits": {"tpm": 1000}, "budget": {"monthly_usd": 1}})
    r = await lim.admit(BOT, "gpt", est(10, 90, "0.25"))
    assert isinstance(r.handle, Hold)
    assert r.handle.tokens == 100
    assert r.handle.cost_nano == 250_000_000
    assert r.handle.periods == ("2026-03",)
