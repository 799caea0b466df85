"""Settler: estimation of missing usage, pricing, limiter settlement, the ledger record —
and that nothing it does can raise into the request path."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.accounting.estimate import count_prompt_tokens, count_text_tokens
from gateway.accounting.ledger import open_ledger
from gateway.accounting.pricing import PriceBook
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.settle import Settler
from gateway.accounting.usage import Usage
from gateway.accounting.writer import LedgerWriter
from gateway.call import Principal
from gateway.closing import Closer
from gateway.limits.base import Estimate, Reservation
from gateway.limits.memory import MemoryLimiter
from gateway.observability.logs import RequestLog
from gateway.policy.models import Policy

BODY = {"model": "gpt", "messages": [{"role": "user", "content": "Say hello to the world."}]}


def make_policy(tmp: Path, estimate: bool = True) -> Policy:
    return Policy.model_validate({
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": f"{tmp}/spill.jsonl",
                   "flush_interval_s": 0.01},
        "accounting": {"estimate_missing_usage": estimate},
        "providers": {"oa": {"kind": "openai", "base_url": "http://x/v1", "api_key": "k"}},
        "models": {"gpt": {"deployments": [
            {"provider": "oa", "model": "gpt-4o", "pricing": [{"input": "2", "output": "8"}]},
            {"provider": "oa", "model": "gpt-4o-mini", "name": "mini",
             "pricing": [{"input": "1", "output": "1"}]}]}},
        "tenants": {"acme": {"budget": {"daily_usd": "100"}, "limits": {"tpm": 100000}}},
    })


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return make_policy(tmp_path)


@pytest.fixture
def settler(policy: Policy) -> Iterator[Settler]:
    s = Settler.from_policy(policy, MemoryLimiter(policy.tenants))
    s.ledger_writer.start()
    yield s
    s.ledger_writer.close()


def record(*attempts: AttemptRecord, rid: str = "r1") -> RequestRecord:
    return RequestRecord(rid, datetime.now(UTC), "acme", "k1", "gpt", "chat", True, 200, 5.0,
                         attempts=list(attempts))


def stored(s: Settler) -> list[RequestRecord]:
    assert s.ledger_writer.flush(10)
    today = datetime.now(UTC).date()
    ledger = open_ledger(s.policy.ledger.url)
    try:
        return list(ledger.read_records(today, today))
    finally:
        ledger.close()


@pytest.mark.asyncio
async def test_prices_every_attempt_and_settles_the_limiter(settler: Settler) -> None:
    limiter = settler.limiter
    assert isinstance(limiter, MemoryLimiter)
    res = await limiter.admit(Principal("acme", "k1"), "gpt", Estimate(100, 100, Decimal("1")))
    r = record(
        AttemptRecord("oa/gpt-4o", "oa", "gpt-4o", "failed_midstream", 200,
                      Usage(input_uncached=1000, output=10, source="provider_partial"), 1.0),
        AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200,
                      Usage(input_uncached=1000, output=500), 1.0),
    )
    await settler.settle(res, r)
    assert r.attempts[0].cost_usd == Decimal("0.00208")
    assert r.attempts[1].cost_usd == Decimal("0.0015")
    assert res.settled
    status = await limiter.budget_status("acme")
    assert status[0].spent_usd == Decimal("0.00358") and status[0].reserved_usd == 0
    [back] = stored(settler)
    assert back.cost_usd == Decimal("0.00358")


@pytest.mark.asyncio
async def test_missing_usage_is_estimated_from_body_and_text(settler: Settler) -> None:
    r = record(
        AttemptRecord("oa/gpt-4o", "oa", "gpt-4o", "error", 503, None, 1.0),
        AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200, None, 1.0),
    )
    await settler.settle(None, r, body=BODY, completion_text="Hello, world!")
    assert r.attempts[0].usage is None and r.attempts[0].cost_usd == 0  # never billed
    u = r.attempts[1].usage
    assert u is not None and u.source == "estimated"
    assert u.input_uncached == count_prompt_tokens(BODY, "gpt-4o-mini")
    assert u.output == count_text_tokens("Hello, world!", "gpt-4o-mini")
    assert r.attempts[1].cost_usd == Decimal(u.input_uncached + u.output).scaleb(-6)
    [back] = stored(settler)
    assert back.attempts[1].usage == u


@pytest.mark.asyncio
async def test_without_body_the_admission_estimate_and_chunks_stand_in(settler: Settler) -> None:
    res = Reservation(Principal("acme", "k1"), "gpt", Estimate(42, 100))
    r = record(AttemptRecord("mini", "oa", "gpt-4o-mini", "cancelled", 200, None, 1.0,
                             streamed_chunks=7))
    await settler.settle(res, r)
    assert r.attempts[0].usage == Usage(input_uncached=42, output=7, source="estimated")


@pytest.mark.asyncio
async def test_estimation_off_leaves_usage_missing(tmp_path: Path) -> None:
    p = make_policy(tmp_path, estimate=False)
    s = Settler(p, PriceBook(p), LedgerWriter.from_policy(p.ledger))
    await s.start()
    r = record(AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200, None, 1.0))
    await s.settle(None, r, body=BODY, completion_text="hi")
    assert r.attempts[0].usage is None and r.cost_usd == 0
    await s.close()
    ledger = open_ledger(p.ledger.url)
    today = datetime.now(UTC).date()
    assert [x.request_id for x in ledger.read_records(today, today)] == ["r1"]
    ledger.close()


class BrokenLimiter(MemoryLimiter):
    async def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        raise RuntimeError("limit store exploded")


@pytest.mark.asyncio
async def test_a_failing_step_never_raises_and_the_record_is_still_kept(policy: Policy) -> None:
    s = Settler.from_policy(policy, BrokenLimiter(policy.tenants))
    s.ledger_writer.start()
    res = Reservation(Principal("acme", "k1"), "gpt", Estimate(1, 1))
    r = record(AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200, Usage(1, output=1), 1.0))
    await s.settle(res, r)
    assert s.failures["limits"] == 1
    assert [x.request_id for x in stored(s)] == ["r1"]
    s.ledger_writer.close()


@pytest.mark.asyncio
async def test_start_restores_budget_spend_from_the_ledger(policy: Policy) -> None:
    first = Settler.from_policy(policy, MemoryLimiter(policy.tenants))
    await first.start()
    await first.settle(None, record(AttemptRecord(
        "oa/gpt-4o", "oa", "gpt-4o", "ok", 200, Usage(input_uncached=1_000_000), 1.0)))
    await first.close()
    limiter = MemoryLimiter(policy.tenants)
    second = Settler.from_policy(policy, limiter)
    await second.start()
    status = await limiter.budget_status("acme")
    assert status[0].spent_usd == Decimal(2)
    report = await second.report(date(2000, 1, 1), datetime.now(UTC).date())
    assert report.totals.cost_usd == Decimal(2)
    await second.close()


class AwaitingLimiter(MemoryLimiter):
    """A limiter whose settlement must await (as Redis's does): no `settle_now`."""

    settle_now = None  # type: ignore[assignment]

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        await asyncio.sleep(0)
        MemoryLimiter.settle_now(self, reservation, tokens, cost_usd)


class BrokenNowLimiter(MemoryLimiter):
    def settle_now(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        raise RuntimeError("limit store exploded")


def _closer(settler: Settler, policy: Policy) -> Closer:
    deps = SimpleNamespace(settler=settler, rollouts=None, request_log=RequestLog(io.StringIO()),
                           runtime=lambda: SimpleNamespace(policy=policy))
    return Closer(deps)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_memory_limited_request_ends_in_a_callback_not_a_task(settler: Settler,
                                                                      policy: Policy) -> None:
    limiter = settler.limiter
    assert isinstance(limiter, MemoryLimiter)
    res = await limiter.admit(Principal("acme", "k1"), "gpt", Estimate(100, 100, Decimal("1")))
    assert settler.finishes_now(res) and settler.finishes_now(None)
    closer = _closer(settler, policy)
    r = record(AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200, Usage(1000, output=500),
                             1.0))
    await closer.close(res, r, None)
    assert not closer._tasks  # no task per request
    assert settler.settled == 0 and not res.settled  # after the response, not within it
    await closer.drain()  # runs what is scheduled
    assert settler.settled == 1 and res.settled
    status = await limiter.budget_status("acme")
    assert status[0].spent_usd == Decimal("0.0015") and status[0].reserved_usd == 0
    assert [x.request_id for x in stored(settler)] == ["r1"]


@pytest.mark.asyncio
async def test_a_limiter_that_must_await_settles_in_a_task(policy: Policy) -> None:
    s = Settler.from_policy(policy, AwaitingLimiter(policy.tenants))
    s.ledger_writer.start()
    limiter = s.limiter
    assert isinstance(limiter, MemoryLimiter)
    res = await limiter.admit(Principal("acme", "k1"), "gpt", Estimate(100, 100, Decimal("1")))
    assert not s.finishes_now(res)
    closer = _closer(s, policy)
    await closer.close(res, record(AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200,
                                                 Usage(1, output=1), 1.0)), None)
    assert len(closer._tasks) == 1
    await closer.drain()
    assert res.settled and s.settled == 1
    s.ledger_writer.close()


@pytest.mark.asyncio
async def test_a_failing_settlement_without_awaiting_still_keeps_the_record(
        policy: Policy) -> None:
    s = Settler.from_policy(policy, BrokenNowLimiter(policy.tenants))
    s.ledger_writer.start()
    res = Reservation(Principal("acme", "k1"), "gpt", Estimate(1, 1))
    s.finish_now(res, record(AttemptRecord("mini", "oa", "gpt-4o-mini", "ok", 200,
                                           Usage(1, output=1), 1.0)))
    assert s.failures["limits"] == 1
    assert [x.request_id for x in stored(s)] == ["r1"]
    s.ledger_writer.close()
