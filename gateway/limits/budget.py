"""Budgets: calendar periods (UTC), exact integer money, alerts, messages, rebuild from the ledger.

Money crosses into the limiters as integer nano-dollars: Redis counts with HINCRBY (exact int64)
and the memory backend with Python ints, so neither accumulates float error. Reservations are
rounded *up* to the next nano-dollar (a worst case must not shrink), actual costs too, so the
counted spend is never below the ledger's by more than 1e-9 USD per request.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from gateway.errors import BudgetExceeded
from gateway.limits.rules import NANO, BudgetRule, PeriodKind
from gateway.limits.rules import to_nano as to_nano  # money helpers live together here

log = logging.getLogger("gateway.limits")

EXCEEDED_HEADER = "x-gateway-budget-exceeded"


def from_nano(n: int) -> Decimal:
    return Decimal(n) / NANO


def period_id(period: PeriodKind, now: datetime) -> str:
    """`2026-03` or `2026-03-14` for the UTC period containing `now`."""
    now = now.astimezone(UTC)
    month = f"{now.year:04d}-{now.month:02d}"
    return month if period == "month" else f"{month}-{now.day:02d}"


def period_end(period: PeriodKind, now: datetime) -> datetime:
    """When the period containing `now` ends (the next one starts), UTC."""
    now = now.astimezone(UTC)
    if period == "day":
        return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=UTC)
    return datetime(now.year, now.month + 1, 1, tzinfo=UTC)


def crossed(thresholds: tuple[int, ...], spent_nano: int) -> int:
    """How many thresholds `spent_nano` has reached."""
    return sum(1 for t in thresholds if spent_nano >= t)


def fmt_usd(amount: Decimal) -> str:
    q = amount.quantize(Decimal("0.000001"))
    s = f"{q:f}".rstrip("0")
    whole, _, frac = s.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget crossed one of its alert fractions (fired once per period, on one replica)."""

    tenant: str
    period: PeriodKind
    period_id: str
    threshold: float
    spent_usd: Decimal
    limit_usd: Decimal


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    tenant: str
    period: PeriodKind
    period_id: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    resets_at: datetime


AlertSink = Callable[[BudgetAlert], None]


def metrics_alert_sink(metrics: Any) -> AlertSink | None:
    """Counts alerts in the gateway's Prometheus `budget_alerts` counter."""
    if metrics is None:
        return None
    return lambda a: metrics.budget_alerts.labels(tenant=a.tenant, threshold=str(a.threshold)).inc()


def chain_sinks(*sinks: AlertSink | None) -> AlertSink | None:
    """One sink telling each of `sinks` (metrics, the alerts' webhooks) in turn."""
    live = [s for s in sinks if s is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def tell_each(alert: BudgetAlert) -> None:
        for sink in live:
            try:
                sink(alert)
            except Exception:  # one failing sink must not silence the others
                log.exception("budget alert callback failed")
    return tell_each


def period_label(period: str) -> str:
    """"monthly" / "daily" (not "dayly")."""
    return "monthly" if period == "month" else "daily"


def fire_alerts(rule: BudgetRule, pid: str, old: int, new: int, spent_nano: int,
                sink: AlertSink | None) -> int:
    """Log and report alerts `old`..`new`-1 of `rule`; returns how many fired."""
    for i in range(old, new):
        alert = BudgetAlert(rule.tenant, rule.period, pid, rule.alerts[i],
                            from_nano(spent_nano), rule.limit_usd)
        log.warning("budget alert: tenant %r spent %s of its %s %s budget (%d %%)",
                    rule.tenant, fmt_usd(alert.spent_usd), period_label(rule.period),
                    fmt_usd(rule.limit_usd), round(rule.alerts[i] * 100))
        if sink is not None:
            try:
                sink(alert)
            except Exception:  # a metrics callback must never fail a request
                log.exception("budget alert callback failed")
    return max(0, new - old)


def over_budget(limit_nano: int, spent: int, reserved: int, cost: int) -> bool:
    """The admission test of the memory backend; admit.lua spells the same test in Lua.

    A zero-cost request is refused once the budget is used up, a priced one as soon as its
    worst case does not fit in what is left.
    """
    used = spent + reserved
    return used >= limit_nano or used + cost > limit_nano


def budget_exceeded(rule: BudgetRule, spent: int, reserved: int, cost: int,
                    now: datetime) -> BudgetExceeded:
    resets = period_end(rule.period, now).strftime("%Y-%m-%dT%H:%M:%SZ")
    label = period_label(rule.period)
    used = spent + reserved
    limit = rule.limit_nano
    if used >= limit:
        message = (f'Budget exceeded for tenant "{rule.tenant}": the {label} budget of '
                   f"{fmt_usd(rule.limit_usd)} is used up ({fmt_usd(from_nano(spent))} spent"
                   + (f", {fmt_usd(from_nano(reserved))} held by requests in flight"
                      if reserved else "")
                   + f"). It resets at {resets}.")
    else:
        message = (f'Budget exceeded for tenant "{rule.tenant}": this request may cost up to '
                   f"{fmt_usd(from_nano(cost))}, but only {fmt_usd(from_nano(limit - used))} "
                   f"of the {label} budget of {fmt_usd(rule.limit_usd)} is left. Lower "
                   f"max_tokens, or wait until it resets at {resets}.")
    return BudgetExceeded(message)


class SpendRestorer(Protocol):
    async def restore_spend(self, spent: Mapping[str, tuple[Decimal, Decimal]]) -> None: ...


SpendSource = (
    Mapping[str, tuple[Decimal, Decimal]]
    | Callable[[], Mapping[str, tuple[Decimal, Decimal]]]
    | Callable[[], Awaitable[Mapping[str, tuple[Decimal, Decimal]]]]
)


async def rebuild_budgets(limiter: SpendRestorer, spent_by_tenant: SpendSource) -> None:
    """Seed the budget counters at start from the ledger's spend per tenant.

    `spent_by_tenant` maps tenant → (spent this UTC month, spent this UTC day), or is a
    zero-argument function (plain or async) returning that mapping — the ledger's query. A
    counter only ever rises: where the shared state already holds more (other replicas settled
    requests the ledger has not written yet), it is kept.
    """
    source = spent_by_tenant() if callable(spent_by_tenant) else spent_by_tenant
    spent = await source if inspect.isawaitable(source) else source
    await limiter.restore_spend(spent)

