"""GPU-hour billing: what a self-hosted deployment cost over a report window, and who pays it.

A deployment with ``gpu_cost_per_hour`` costs money from when it is provisioned to when it is
removed, used or not. Gateways record that lifetime as periods (``gpu_lifetimes.py`` writes
them, ``gpu_periods.py`` stores them); this module turns periods into charges, with no I/O
(docs/accounting.md, "GPU-hour billing", has the rule and a worked example):

- **Billed time** of a deployment: the union of its periods, within the report window
  ``[from 00:00, to + 1 day 00:00)`` capped at now. Replicas record overlapping periods; the
  union counts each instant once.
- **Price**: where periods overlap at different prices (replicas on different policy
  versions during a reload), the period a gateway opened last wins — the newest policy.
- **Cost**, per deployment and price: ``price × billed time`` from the exact time (to the
  microsecond), rounded half-even once to 10⁻⁹ USD — five minutes at $3/h is $0.25. **Hours**
  are shown rounded half-even to 10⁻⁶ h (3.6 ms), so ``hours × price`` can differ from the
  cost in the last digits; the cost is the exact one.
- **Shares**: a charge's cost and its hours are each split among tenants in proportion to
  their tokens on the deployment in the window (``allocate_exact``: 10⁻⁹ quanta, the parts
  sum exactly to the whole). A deployment nobody used in the window is one ``(unallocated)``
  row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from gateway.accounting.pricing import EXACT, ZERO, allocate_exact, as_utc

UNALLOCATED = "(unallocated)"
_MICROSECONDS_PER_HOUR = 3_600_000_000
_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class GpuPeriod:
    """A span during which one gateway process had the deployment in force at one price.

    ``since`` is the policy's ``gpu_since`` when the period was recorded; ``period_id`` and
    ``replica`` identify the row (billing ignores them)."""

    deployment: str
    provider: str
    rate_per_hour: Decimal
    started: datetime
    ended: datetime
    since: datetime | None = None
    period_id: str = ""
    replica: str = ""


@dataclass(frozen=True, slots=True)
class GpuCharge:
    """One deployment at one price over the window."""

    deployment: str
    provider: str
    rate_per_hour: Decimal
    microseconds: int  # billed time
    first: datetime  # when this price first applied in the window (orders the rows)

    @property
    def hours(self) -> Decimal:
        return hours_of(self.microseconds)

    @property
    def cost_usd(self) -> Decimal:
        return cost_of(self.rate_per_hour, self.microseconds)


@dataclass(frozen=True, slots=True)
class GpuAllocation:
    """A tenant's share of one charge (hours and cost, each split by tokens)."""

    deployment: str
    provider: str
    tenant: str  # UNALLOCATED: nobody used the deployment in the window
    hours: Decimal
    rate_per_hour: Decimal
    tokens: int
    cost_usd: Decimal


def report_window(start: date, end: date, now: datetime) -> tuple[datetime, datetime]:
    """``[start 00:00, end + 1 day 00:00)`` in UTC, the end capped at ``now`` (a report on
    the current month does not bill the rest of it)."""
    begin = datetime.combine(start, time(), UTC)
    stop = datetime.combine(end + timedelta(days=1), time(), UTC)
    return begin, max(begin, min(stop, as_utc(now)))


def _round_div(n: int, d: int) -> int:
    """n / d rounded half-even, in integers (exact for any size)."""
    q, r = divmod(n, d)
    if 2 * r > d or (2 * r == d and q % 2):
        q += 1
    return q


def hours_of(microseconds: int) -> Decimal:
    """Microseconds as hours, rounded half-even to 10⁻⁶ h."""
    return Decimal(_round_div(microseconds, 3600)).scaleb(-6, EXACT)


def cost_of(rate_per_hour: Decimal, microseconds: int) -> Decimal:
    """``rate × time`` in USD, rounded half-even to 10⁻⁹ (one rounding, in integers)."""
    sign, digits, exp = rate_per_hour.as_tuple()
    assert isinstance(exp, int) and not sign, "GPU rates are finite and not negative"
    mantissa = int("".join(map(str, digits)) or "0")
    # rate × µs / 3.6·10⁹ h in units of 10⁻⁹ USD = mantissa × 10^exp × µs / 3.6
    num, den = mantissa * microseconds * 10, 36
    if exp >= 0:
        num *= 10**exp
    else:
        den *= 10**-exp
    return Decimal(_round_div(num, den)).scaleb(-9, EXACT)


def provisioned_before(first: GpuPeriod, since: datetime | None) -> GpuPeriod | None:
    """The span from ``gpu_since`` to the deployment's first recorded period, billed at that
    period's price (None when gpu_since is unset or not earlier)."""
    if since is None or as_utc(since) >= first.started:
        return None
    return GpuPeriod(first.deployment, first.provider, first.rate_per_hour, as_utc(since),
                     first.started, period_id="gpu_since")


def _pieces(periods: Sequence[GpuPeriod], begin: datetime, end: datetime
            ) -> Iterable[tuple[datetime, datetime, GpuPeriod]]:
    """The window cut where any period starts or ends; each covered piece with the period
    whose price applies (the latest opened of those covering it)."""
    cuts = sorted({begin, end, *(t for p in periods for t in (p.started, p.ended)
                                 if begin < t < end)})
    # Periods per deployment are few (one per process start, reload or price change), so a
    # scan per piece is cheap; ties at the same microsecond go to the higher price.
    ordered = sorted(periods, key=lambda p: (p.started, p.rate_per_hour), reverse=True)
    for a, b in itertools.pairwise(cuts):
        owner = next((p for p in ordered if p.started <= a and b <= p.ended), None)
        if owner is not None:
            yield a, b, owner


def charges(periods: Iterable[GpuPeriod], begin: datetime, end: datetime) -> list[GpuCharge]:
    """Each deployment's billed hours per price in ``[begin, end)``, ordered by deployment and
    then by when the price first applied."""
    by_dep: dict[str, list[GpuPeriod]] = {}
    for p in periods:
        p = _utc(p)
        if p.ended > p.started:
            by_dep.setdefault(p.deployment, []).append(p)
    out: list[GpuCharge] = []
    for dep in sorted(by_dep):
        spans = by_dep[dep]
        provider = max(spans, key=lambda p: p.started).provider
        used: dict[Decimal, tuple[int, datetime]] = {}
        for a, b, owner in _pieces(spans, begin, end):
            us, first = used.get(owner.rate_per_hour, (0, a))
            used[owner.rate_per_hour] = (us + (b - a) // _US, min(first, a))
        for rate, (us, first) in sorted(used.items(), key=lambda kv: kv[1][1]):
            if us:
                out.append(GpuCharge(dep, provider, rate, us, first))
    return out


def allocate(items: Iterable[GpuCharge], tokens: Mapping[tuple[str, str], int]
             ) -> list[GpuAllocation]:
    """Split each charge among tenants by their tokens on its deployment ((deployment,
    tenant) → tokens in the window)."""
    out = []
    for c in items:
        weights = {t: n for (d, t), n in tokens.items() if d == c.deployment and n > 0}
        hours = allocate_exact(c.hours, weights) or {UNALLOCATED: c.hours}
        costs = allocate_exact(c.cost_usd, weights) or {UNALLOCATED: c.cost_usd}
        for tenant in sorted(hours):
            out.append(GpuAllocation(c.deployment, c.provider, tenant, hours[tenant],
                                     c.rate_per_hour, weights.get(tenant, 0), costs[tenant]))
    return out


def total_hours(rows: Iterable[GpuAllocation]) -> Decimal:
    return sum((g.hours for g in rows), ZERO)


def _utc(p: GpuPeriod) -> GpuPeriod:
    if p.started.tzinfo is UTC and p.ended.tzinfo is UTC:
        return p
    return GpuPeriod(p.deployment, p.provider, p.rate_per_hour, as_utc(p.started),
                     as_utc(p.ended), p.since and as_utc(p.since), p.period_id, p.replica)
