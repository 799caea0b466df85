"""Which limits apply to one request: the policy's tenants turned into a flat list of rules.

Both limiter backends admit over the same `Plan`, so the memory and Redis backends cannot
disagree about what applies. A plan depends only on (tenant, key id, model) and is cached; a
policy reload replaces the `Rules` object (one reference swap) and with it the cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Literal

from gateway.call import Principal
from gateway.limits.base import Reservation
from gateway.policy.tenants import KeyConfig, RateLimits, TenantConfig

RateKind = Literal["rpm", "tpm"]
ScopeKind = Literal["tenant", "key", "model"]
PeriodKind = Literal["month", "day"]

# Rate limits are "per minute": a bucket of `limit` units refilled over this window.
WINDOW_S = 60.0
_MAX_PLANS = 100_000
NANO = Decimal(1_000_000_000)


def to_nano(usd: Decimal) -> int:
    """USD as integer nano-dollars, rounded up (a worst case must not shrink)."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a limit is counted for; `id` is unique among scopes and safe in a storage key."""

    kind: ScopeKind
    tenant: str
    key_id: str | None = None
    key_name: str | None = None
    model: str | None = None

    @property
    def id(self) -> str:
        if self.kind == "key":
            return f"k:{self.key_id}"
        if self.kind == "model":
            return f"m:{self.model}"
        return "t"

    def describe(self) -> str:
        """The scope as the error message names it."""
        if self.kind == "key":
            return f'key "{self.key_name or self.key_id}" (tenant "{self.tenant}")'
        if self.kind == "model":
            return f'model "{self.model}" (tenant "{self.tenant}")'
        return f'tenant "{self.tenant}"'


@dataclass(frozen=True, slots=True)
class RateRule:
    """RPM or TPM of one scope: a GCRA bucket holding `limit` units, refilled over 60 s."""

    scope: Scope
    kind: RateKind
    limit: int
    # The bucket's name within its tenant (a storage key suffix), computed once.
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.kind}:{self.scope.id}")


@dataclass(frozen=True, slots=True)
class ConcurrencyRule:
    scope: Scope
    limit: int
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"conc:{self.scope.id}")


@dataclass(frozen=True, slots=True)
class BudgetRule:
    tenant: str
    period: PeriodKind
    limit_usd: Decimal
    block: bool
    # Sorted fractions of the limit at which an alert fires once per period.
    alerts: tuple[float, ...]
    # The limit and the alert points in nano-dollars, computed once.
    limit_nano: int = field(init=False)
    thresholds: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        limit = to_nano(self.limit_usd)
        object.__setattr__(self, "limit_nano", limit)
        object.__setattr__(self, "thresholds",
                           tuple(math.ceil(Decimal(str(a)) * limit) for a in self.alerts))


@dataclass(frozen=True, slots=True)
class Plan:
    """Every limit one request is admitted under. Empty: admitted without any bookkeeping."""

    tenant: str
    rates: tuple[RateRule, ...] = ()
    concurrency: tuple[ConcurrencyRule, ...] = ()
    budgets: tuple[BudgetRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.rates or self.concurrency or self.budgets)


@dataclass(slots=True)
class Hold:
    """What one admission took (`Reservation.handle` in both backends)."""

    id: str
    plan: Plan
    # Tokens taken from every TPM bucket at admission (the estimate).
    tokens: int
    # Worst-case cost held against every budget, in nano-dollars.
    cost_nano: int
    # The budget period (e.g. "2026-03") of each of `plan.budgets`, fixed at admission so a
    # request that straddles midnight settles where it reserved.
    periods: tuple[str, ...]
    # on_exceed "allow" admitted this request past a budget (also sent as a header).
    budget_exceeded: bool = False
    # Admitted by fail_open while the shared store was unreachable: nothing was reserved.
    unlimited: bool = False


def take_hold(reservation: Reservation) -> Hold | None:
    """Mark `reservation` settled and return its hold: None when it was settled already (a
    reservation settles exactly once) or admitted without bookkeeping."""
    if reservation.settled:
        return None
    reservation.settled = True
    hold = reservation.handle
    return hold if isinstance(hold, Hold) else None


def _scope_rules(scope: Scope, limits: RateLimits | None,
                 rates: list[RateRule], conc: list[ConcurrencyRule]) -> None:
    if limits is None:
        return
    if limits.rpm is not None:
        rates.append(RateRule(scope, "rpm", limits.rpm))
    if limits.tpm is not None:
        rates.append(RateRule(scope, "tpm", limits.tpm))
    if limits.concurrency is not None:
        conc.append(ConcurrencyRule(scope, limits.concurrency))


class Rules:
    """The tenants of one policy version, resolved into plans on demand."""

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self.tenants = dict(tenants)
        self._keys: dict[tuple[str, str], KeyConfig] = {
            (name, k.id): k for name, t in self.tenants.items() for k in t.keys
        }
        self._plans: dict[tuple[str, str, str], Plan] = {}

    def plan(self, principal: Principal, model: str) -> Plan:
        cache_key = (principal.tenant, principal.key_id, model)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._build(principal, model)
            # Bounded by tenants x keys x models (the proxy admits known models only); the cap
            # guards memory should a caller ever reach here with arbitrary names.
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[cache_key] = plan
        return plan

    def budgets(self, tenant: str) -> tuple[BudgetRule, ...]:
        return self._build(Principal(tenant=tenant, key_id=""), "").budgets

    def _build(self, principal: Principal, model: str) -> Plan:
        tenant = self.tenants.get(principal.tenant)
        if tenant is None:
            return Plan(principal.tenant)
        rates: list[RateRule] = []
        conc: list[ConcurrencyRule] = []
        name = principal.tenant
        _scope_rules(Scope("tenant", name), tenant.limits, rates, conc)
        key = self._keys.get((name, principal.key_id))
        key_limits = key.limits if key is not None and key.limits is not None else tenant.key_limits
        key_scope = Scope("key", name, key_id=principal.key_id,
                          key_name=principal.key_name or (key.name if key else None))
        _scope_rules(key_scope, key_limits, rates, conc)
        _scope_rules(Scope("model", name, model=model), tenant.model_limits.get(model),
                     rates, conc)
        budgets: list[BudgetRule] = []
        b = tenant.budget
        if b is not None:
            alerts = tuple(sorted(a for a in b.alerts if a > 0))
            block = b.on_exceed == "block"
            if b.monthly_usd is not None:
                budgets.append(BudgetRule(name, "month", b.monthly_usd, block, alerts))
            if b.daily_usd is not None:
                budgets.append(BudgetRule(name, "day", b.daily_usd, block, alerts))
        return Plan(name, tuple(rates), tuple(conc), tuple(budgets))
