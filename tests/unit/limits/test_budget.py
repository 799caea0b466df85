"""Budgets in the memory backend: worst-case holds, settle, alerts, periods, rebuild."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.errors import BudgetExceeded
from gateway.limits.budget import (
    BudgetAlert,
    fmt_usd,
    from_nano,
    period_end,
    rebuild_budgets,
    to_nano,
)
from gateway.limits.memory import MemoryLimiter
from tests.unit.limits.clock import BOT, Clock, est, limiter, tenants


@pytest.mark.asyncio
async def test_worst_case_is_held_until_settle_and_then_replaced_by_the_actual_cost() -> None:
    lim = limiter(Clock(), acme={"budget": {"monthly_usd": "1.00"}})
    held = [await lim.admit(BOT, "gpt", est(cost="0.30")) for _ in range(3)]
    with pytest.raises(BudgetExceeded) as e:
        await lim.admit(BOT, "gpt", est(cost="0.30"))
    assert e.value.status == 402 and e.value.code == "budget_exceeded"
    assert e.value.message == (
        'Budget exceeded for tenant "acme": this request may cost up to $0.30, but only $0.10 '
        "of the monthly budget of $1.00 is left. Lower max_tokens, or wait until it resets "
        "at 2026-04-01T00:00:00Z.")
    for r in held:
        await lim.settle(r, 10, Decimal("0.05"))
    [status] = await lim.budget_status("acme")
    assert (status.spent_usd, status.reserved_usd) == (Decimal("0.15"), Decimal(0))
    await lim.admit(BOT, "gpt", est(cost="0.30"))


@pytest.mark.asyncio
async def test_used_up_budget_refuses_even_free_requests_and_names_the_reset() -> None:
    clock = Clock(datetime(2026, 3, 14, 23, 0, tzinfo=UTC))
    lim = limiter(clock, acme={"budget": {"daily_usd": "0.10"}})
    r = await lim.admit(BOT, "gpt", est(cost="0.10"))
    await lim.settle(r, 10, Decimal("0.12"))
    with pytest.raises(BudgetExceeded) as e:
        await lim.admit(BOT, "gpt", est(cost="0"))
    assert e.value.message == ('Budget exceeded for tenant "acme": the daily budget of $0.10 is '
                               "used up ($0.12 spent). It resets at 2026-03-15T00:00:00Z.")
    clock.advance(3600)  # midnight UTC: a new day
    await lim.admit(BOT, "gpt", est(cost="0.05"))


@pytest.mark.asyncio
async def test_on_exceed_allow_admits_and_flags() -> None:
    lim = limiter(Clock(), acme={"budget": {"monthly_usd": "0.10", "on_exceed": "allow"}})
    ok = await lim.admit(BOT, "gpt", est(cost="0.05"))
    assert "x-gateway-budget-exceeded" not in ok.headers
    over = await lim.admit(BOT, "gpt", est(cost="0.10"))
    assert over.headers["x-gateway-budget-exceeded"] == "true"
    assert over.handle.budget_exceeded  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_hold_whose_lease_expired_is_released() -> None:
    clock = Clock()
    lim = limiter(clock, lease_s=60, acme={"budget": {"monthly_usd": "1"}})
    await lim.admit(BOT, "gpt", est(cost="1"))  # never settled: its replica died
    with pytest.raises(BudgetExceeded):
        await lim.admit(BOT, "gpt", est(cost="0.5"))
    clock.advance(60)
    await lim.admit(BOT, "gpt", est(cost="0.5"))


@pytest.mark.asyncio
async def test_alerts_fire_once_per_crossing() -> None:
    seen: list[BudgetAlert] = []
    clock = Clock()
    lim = MemoryLimiter(tenants(acme={"budget": {"monthly_usd": "10", "alerts": [0.5, 0.9]}}),
                        clock=clock, wall=clock.wall, on_budget_alert=seen.append)
    for cost in ("4", "1", "0.5", "3", "0.5"):
        r = await lim.admit(BOT, "gpt", est(cost="0.01"))
        await lim.settle(r, 1, Decimal(cost))
    assert [(a.threshold, a.spent_usd) for a in seen] == [(0.5, Decimal(5)), (0.9, Decimal(9))]
    assert all(a.period == "month" and a.period_id == "2026-03" for a in seen)
    assert lim.budget_alerts == 2


@pytest.mark.asyncio
async def test_rebuild_takes_the_ledger_spend_and_never_lowers_it() -> None:
    seen: list[BudgetAlert] = []
    clock = Clock()
    lim = MemoryLimiter(tenants(acme={"budget": {"monthly_usd": "10", "daily_usd": "2"}}),
                        clock=clock, wall=clock.wall, on_budget_alert=seen.append)
    await rebuild_budgets(lim, {"acme": (Decimal("6"), Decimal("1")), "gone": (Decimal(1),) * 2})

    async def ledger() -> dict[str, tuple[Decimal, Decimal]]:
        return {"acme": (Decimal("5"), Decimal("0.5"))}

    await rebuild_budgets(lim, ledger)
    month, day = await lim.budget_status("acme")
    assert (month.spent_usd, day.spent_usd) == (Decimal(6), Decimal(1))
    assert seen == []  # crossed before this process started: not alerted again
    with pytest.raises(BudgetExceeded, match="daily budget of \\$2"):
        await lim.admit(BOT, "gpt", est(cost="1.5"))


def test_money_is_exact_and_rounded_up_to_the_nano_dollar() -> None:
    assert to_nano(Decimal("0.0000000011")) == 2
    assert to_nano(Decimal("1.25")) == 1_250_000_000
    assert from_nano(1_250_000_000) == Decimal("1.25")
    assert fmt_usd(Decimal("100")) == "$100.00"
    assert fmt_usd(Decimal("0.000123")) == "$0.000123"


def test_periods_are_utc_calendar_months_and_days() -> None:
    dec = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_end("month", dec) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end("day", dec) == datetime(2027, 1, 1, tzinfo=UTC)


def test_alert_log_names_the_period_in_english(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.limits.budget import fire_alerts
    from gateway.limits.rules import BudgetRule

    for period, word in (("day", "daily"), ("month", "monthly")):
        rule = BudgetRule("acme", period, Decimal("10"), True, (0.5,))  # type: ignore[arg-type]
        with caplog.at_level("WARNING", logger="gateway.limits.budget"):
            fire_alerts(rule, "p", 0, 1, to_nano(Decimal("6")), None)
        assert f"of its {word} $10" in caplog.text or f"of its {word} " in caplog.text
        assert "dayly" not in caplog.text
