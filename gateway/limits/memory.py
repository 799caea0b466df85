"""The one-replica limiter: every counter in this process's memory.

`admit` never awaits between checking and reserving, so on one event loop it is atomic, the
same guarantee the Redis backend gets from running one Lua script. The arithmetic here is the
reference for admit.lua and settle.lua: both backends must answer the same requests the same way.

Rates use GCRA (the "virtual scheduling" form of a token bucket): one number per bucket, the
theoretical arrival time (TAT). A bucket of `limit` units refills at `limit` per 60 s; a request
of `cost` units fits when, after adding `cost` emission intervals to the TAT, the TAT is at most
60 s ahead of now.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.call import Principal
from gateway.ids import new_id
from gateway.limits import budget as b
from gateway.limits.base import Estimate, Reservation
from gateway.limits.headers import RateState, rate_headers, rate_limited
from gateway.limits.rules import WINDOW_S, BudgetRule, Hold, RateRule, Rules, take_hold
from gateway.policy.models import Policy
from gateway.policy.tenants import TenantConfig

# A concurrency slot or budget hold not settled within this many seconds is released: it is
# how a replica that died mid-request gives its reservations back. It must outlast the longest
# request served, or a long request loses its slot early (see lease_for).
DEFAULT_LEASE_S = 600.0


def lease_for(policy: Policy) -> float:
    """The longest a request can run under `policy` (every attempt at its total timeout), plus
    a minute; at most an hour, so a crashed replica's slots come back within the hour."""
    totals: list[float] = [60.0]
    for p in policy.providers.values():
        totals.append(p.timeouts.total)
    for route in policy.models.values():
        totals += [d.timeouts.total for d in route.deployments if d.timeouts is not None]
    attempts = max([policy.router.max_attempts,
                    *(r.max_attempts or 0 for r in policy.models.values())])
    return min(3600.0, max(totals) * attempts + 60.0)


# The two below are shared with the Redis backend: both answer with the same reservation and
# the same budget status.

def admitted(reservation: Reservation, hold: Hold, states: list[RateState]) -> Reservation:
    """`reservation` holding what its admission took, with the headers the client gets."""
    reservation.handle = hold
    reservation.headers = rate_headers(states)
    if hold.budget_exceeded:
        reservation.headers[b.EXCEEDED_HEADER] = "true"
    return reservation


def budget_status(rule: BudgetRule, pid: str, spent_nano: int, reserved_nano: int,
                  wall: datetime) -> b.BudgetStatus:
    return b.BudgetStatus(rule.tenant, rule.period, pid, rule.limit_usd, b.from_nano(spent_nano),
                          b.from_nano(reserved_nano), b.period_end(rule.period, wall))


_EPS = 1e-9


def gcra(tat: float | None, now: float, rule: RateRule, cost: int) -> tuple[RateState, float]:
    """Check one bucket. Returns its state and the TAT to store if the request is admitted."""
    interval = WINDOW_S / rule.limit
    base = now if tat is None or tat < now else tat
    new = base + cost * interval
    if cost > rule.limit or new - now > WINDOW_S + _EPS:
        left = math.floor((WINDOW_S - (base - now)) / interval + _EPS)
        too_large = cost > rule.limit
        retry = base - now if too_large else new - WINDOW_S - now
        return RateState(rule, False, left, base - now, retry, cost, too_large), base
    left = math.floor((WINDOW_S - (new - now)) / interval + _EPS)
    return RateState(rule, True, left, new - now, 0.0, cost), new


def charge(tat: float | None, now: float, rule: RateRule, delta: int) -> float:
    """Settle: move the TAT by `delta` units (a refund when negative), never below now."""
    base = now if tat is None or tat < now else tat
    return max(now, base + delta * WINDOW_S / rule.limit)


@dataclass(slots=True)
class _BudgetState:
    spent: int = 0
    # hold id -> (nano-dollars held, lease expiry on the monotonic clock)
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)
    reserved: int = 0
    alerted: int = 0

    def expire(self, now: float) -> None:
        # Leases are all lease_s long on a monotonic clock, so insertion order is expiry order.
        while self.holds:
            hid, (amount, exp) = next(iter(self.holds.items()))
            if exp > now:
                return
            del self.holds[hid]
            self.reserved -= amount


def _expire(slots: dict[str, float], now: float) -> None:
    """Drop expired concurrency leases (oldest first, as in _BudgetState.expire)."""
    while slots:
        hid, exp = next(iter(slots.items()))
        if exp > now:
            return
        del slots[hid]


class MemoryLimiter:
    """Limits for one replica. `clock` (monotonic seconds) and `wall` (UTC now, for budget
    periods) are injectable so tests can move time."""

    def __init__(self, tenants: Mapping[str, TenantConfig], *,
                 lease_s: float = DEFAULT_LEASE_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_budget_alert: b.AlertSink | None = None) -> None:
        self._rules = Rules(tenants)
        self._lease_s = lease_s
        self._clock = clock
        self._wall = wall
        self._on_alert = on_budget_alert
        self._tat: dict[tuple[str, str], float] = {}
        self._slots: dict[tuple[str, str], dict[str, float]] = {}
        self._budgets: dict[tuple[str, str, str], _BudgetState] = {}
        self.budget_alerts = 0
        """Alerts fired so far (the lead's metrics read it or pass `on_budget_alert`)."""

    @classmethod
    def from_policy(cls, policy: Policy, metrics: Any = None,
                    on_budget_alert: b.AlertSink | None = None) -> MemoryLimiter:
        return cls(policy.tenants, lease_s=lease_for(policy),
                   on_budget_alert=b.chain_sinks(b.metrics_alert_sink(metrics),
                                                 on_budget_alert))

    def set_policy(self, policy: Policy) -> None:
        self.update_tenants(policy.tenants)

    def update_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        """Policy reload: new rules for new requests; counters and holds carry over."""
        self._rules = Rules(tenants)

    async def admit(self, principal: Principal, model: str, estimate: Estimate) -> Reservation:
        plan = self._rules.plan(principal, model)
        reservation = Reservation(principal, model, estimate)
        if plan.empty:
            return reservation
        now = self._clock()
        wall = self._wall()
        cost_nano = b.to_nano(estimate.cost_usd)
        periods = tuple(b.period_id(r.period, wall) for r in plan.budgets)
        budgets = [self._budget(r, pid, now) for r, pid in zip(plan.budgets, periods, strict=True)]
        exceeded = False
        for rule, st in zip(plan.budgets, budgets, strict=True):
            if b.over_budget(rule.limit_nano, st.spent, st.reserved, cost_nano):
                if rule.block:
                    raise b.budget_exceeded(rule, st.spent, st.reserved, cost_nano, wall)
                exceeded = True
        results = [self._check_rate(r, now, estimate) for r in plan.rates]
        states = [s for s, _ in results]
        refused_slot = None
        for c in plan.concurrency:
            slots = self._slots.setdefault((plan.tenant, c.key), {})
            _expire(slots, now)
            if len(slots) >= c.limit and refused_slot is None:
                refused_slot = c
        if refused_slot is not None or not all(s.ok for s in states):
            raise rate_limited(states, refused_slot)

        # Every check passed: reserve everything (no await since the checks).
        hold = Hold(new_id(), plan, estimate.tokens, cost_nano, periods, exceeded)
        for rate, (_, tat) in zip(plan.rates, results, strict=True):
            self._tat[(plan.tenant, rate.key)] = tat
        for c in plan.concurrency:
            self._slots[(plan.tenant, c.key)][hold.id] = now + self._lease_s
        for st in budgets:
            st.holds[hold.id] = (cost_nano, now + self._lease_s)
            st.reserved += cost_nano
        return admitted(reservation, hold, states)

    def _check_rate(self, rule: RateRule, now: float,
                    estimate: Estimate) -> tuple[RateState, float]:
        cost = 1 if rule.kind == "rpm" else estimate.tokens
        return gcra(self._tat.get((rule.scope.tenant, rule.key)), now, rule, cost)

    def _budget(self, rule: BudgetRule, pid: str, now: float) -> _BudgetState:
        st = self._budgets.setdefault((rule.tenant, rule.period, pid), _BudgetState())
        st.expire(now)
        return st

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        self.settle_now(reservation, tokens, cost_usd)

    def settle_now(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        """`settle`, which never awaits here: the closer calls this one directly, so that a
        request's end costs a callback rather than a task (accounting/settle.py)."""
        hold = take_hold(reservation)
        if hold is None:
            return
        now = self._clock()
        plan = hold.plan
        for rate in plan.rates:
            if rate.kind == "tpm":
                key = (plan.tenant, rate.key)
                self._tat[key] = charge(self._tat.get(key), now, rate, tokens - hold.tokens)
        for c in plan.concurrency:
            self._slots.get((plan.tenant, c.key), {}).pop(hold.id, None)
        actual = b.to_nano(cost_usd)
        for rule, pid in zip(plan.budgets, hold.periods, strict=True):
            st = self._budget(rule, pid, now)
            held = st.holds.pop(hold.id, None)
            if held is not None:
                st.reserved -= held[0]
            st.spent += actual
            reached = b.crossed(rule.thresholds, st.spent)
            if reached > st.alerted:
                self.budget_alerts += b.fire_alerts(rule, pid, st.alerted, reached, st.spent,
                                                    self._on_alert)
                st.alerted = reached

    async def restore_spend(self, spent: Mapping[str, tuple[Decimal, Decimal]]) -> None:
        wall = self._wall()
        now = self._clock()
        for tenant, (month, day) in spent.items():
            for rule in self._rules.budgets(tenant):
                st = self._budget(rule, b.period_id(rule.period, wall), now)
                st.spent = max(st.spent, b.to_nano(month if rule.period == "month" else day))
                # Crossed before this process started: already alerted then, stay quiet.
                st.alerted = max(st.alerted, b.crossed(rule.thresholds, st.spent))

    async def budget_status(self, tenant: str) -> list[b.BudgetStatus]:
        """Spend against each budget of `tenant` in the current periods (admin API, tests)."""
        wall = self._wall()
        now = self._clock()
        out = []
        for rule in self._rules.budgets(tenant):
            pid = b.period_id(rule.period, wall)
            st = self._budget(rule, pid, now)
            out.append(budget_status(rule, pid, st.spent, st.reserved, wall))
        return out

    async def close(self) -> None:
        return None
