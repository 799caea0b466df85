"""The many-replica limiter: every counter in Redis, one Lua script (one round trip) per admission.

Settlements are batched off every request's path (redis_batch.py): queued, they ride in the
next admission's round trip, or leave together by a timer after `settle_window_s` when no
admission comes — so under load a request costs one round trip, its admission's.

admit.lua checks and reserves RPM, TPM and concurrency for every scope plus the budgets in one
atomic step on Redis's clock, so two replicas together are held to exactly the limits one
process would be. Scripts run by EVALSHA; when Redis has lost them (restart, SCRIPT FLUSH, a
failover) the NOSCRIPT reply makes us load the script once and retry.

Keys carry the tenant as a hash tag (`gw:{acme}:rpm:t`) so one admission touches one Redis
Cluster slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.call import Principal
from gateway.errors import ServiceUnavailable
from gateway.ids import new_id
from gateway.limits import budget as b
from gateway.limits.base import Estimate, Reservation
from gateway.limits.headers import RateState, rate_limited
from gateway.limits.memory import DEFAULT_LEASE_S, admitted, budget_status, lease_for
from gateway.limits.redis_batch import DEFAULT_WINDOW_S, SettleBatcher
from gateway.limits.rules import BudgetRule, Hold, Plan, Rules, take_hold
from gateway.policy.models import Policy
from gateway.policy.tenants import TenantConfig
from gateway.redis_packing import packed

log = logging.getLogger("gateway.limits")

FailMode = Literal["fail_open", "fail_closed"]
# Budget hashes outlive their period long enough for late settlements and reports.
_TTL_S = {"month": 62 * 86400, "day": 3 * 86400}
# After Redis failed, this many seconds go straight to the fail mode instead of waiting out a
# connect timeout on every request; then the next request tries Redis again.
_DOWN_S = 1.0
_LOG_EVERY_S = 10.0
# Connecting gets longer than a call. A burst of admissions on an empty pool (start-up, a
# spike) opens one connection each at once, and every connect's clock runs while the event
# loop sets up all the others: 25 at once took 0.2-0.4 s on a 2-core host at load 8, and
# past the call timeout (0.5 s) under more load, failing open with "Timeout connecting to
# server". A Redis that is down refuses at once; an unreachable one costs this once per
# _DOWN_S.
_CONNECT_TIMEOUT_S = 2.0


class _Script:
    """A Lua script run by EVALSHA; loaded on the first NOSCRIPT reply, then EVALSHA again.

    The SHA is computed here, so when another replica already loaded the script the very first
    call is a single EVALSHA too."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = await self._client.script_load(self.source)
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)


def _lua(name: str) -> str:
    return resources.files("gateway.limits").joinpath(name).read_text()


@dataclass(frozen=True, slots=True)
class _Prepared:
    """The per-plan parts of the script call that do not change between requests."""

    plan: Plan
    rate_keys: tuple[str, ...]
    conc_keys: tuple[str, ...]
    tpm: tuple[int, ...]  # indexes of the TPM rules among plan.rates
    rate_limits: tuple[int, ...]
    conc_limits: tuple[int, ...]


class RedisLimiter:
    """Limits shared by every replica through Redis.

    `redis_errors` counts failed Redis calls and `on_store_error(operation, exc)` is told of
    each (the lead's metrics); logging is limited to one line per 10 s.
    """

    def __init__(self, tenants: Mapping[str, TenantConfig], *, url: str,
                 key_prefix: str = "gw:", on_redis_error: FailMode = "fail_open",
                 lease_s: float = DEFAULT_LEASE_S, socket_timeout_s: float = 0.5,
                 max_connections: int = 256, settle_window_s: float = DEFAULT_WINDOW_S,
                 on_budget_alert: b.AlertSink | None = None,
                 on_store_error: Callable[[str, Exception], None] | None = None,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._rules = Rules(tenants)
        self._prefix = key_prefix
        self._fail_open = on_redis_error == "fail_open"
        self._lease_us = int(lease_s * 1_000_000)
        self._wall = wall
        self._on_alert = on_budget_alert
        self._on_error = on_store_error
        # Packed by hiredis: an admission's EVALSHA packed in Python cost ~6× as much.
        pool = packed(aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=max(socket_timeout_s, _CONNECT_TIMEOUT_S),
            # One immediate retry on a broken pooled connection (Redis restarted); never on a
            # timeout, where the script may have run and a retry would reserve twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))))
        self._redis = aioredis.Redis(connection_pool=pool)
        self._admit = _Script(self._redis, _lua("admit.lua"))
        self._settle = _Script(self._redis, _lua("settle.lua"))
        self._restore = _Script(self._redis, _lua("restore.lua"))
        self.settlements = SettleBatcher(self._redis, self._settle, window_s=settle_window_s)
        """settle.lua calls, pipelined in batches (`round_trips` counts them)."""
        self._prepared: dict[int, _Prepared] = {}
        self._orphans: set[asyncio.Future[None]] = set()
        self._down_until = 0.0
        self._last_log = 0.0
        self._suppressed = 0
        self.redis_errors = 0
        """Redis calls that failed (admissions and settlements)."""
        self.degraded_admissions = 0
        """Admissions decided by `on_redis_error` because Redis was unreachable."""
        self.budget_alerts = 0
        """Budget alerts this replica fired (each crossing fires on one replica only)."""

    @classmethod
    def from_policy(cls, policy: Policy, metrics: Any = None,
                    on_budget_alert: b.AlertSink | None = None) -> RedisLimiter:
        """Wired to the gateway's metrics: store failures by outcome, budget alerts."""
        if policy.state.redis_url is None:
            raise ValueError("RedisLimiter needs state.redis_url")
        outcome = policy.state.on_redis_error

        def count_error(operation: str, exc: Exception) -> None:
            if metrics is not None:
                metrics.limit_store_errors.labels(outcome=outcome).inc()

        return cls(policy.tenants, url=policy.state.redis_url, key_prefix=policy.state.key_prefix,
                   on_redis_error=outcome, lease_s=lease_for(policy),
                   on_budget_alert=b.chain_sinks(b.metrics_alert_sink(metrics),
                                                 on_budget_alert),
                   on_store_error=count_error)

    def set_policy(self, policy: Policy) -> None:
        self.update_tenants(policy.tenants)

    def update_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        """Policy reload: new rules for new requests; counters in Redis carry over."""
        self._rules = Rules(tenants)
        self._prepared = {}

    # -- keys ------------------------------------------------------------------------------

    def _key(self, tenant: str, *parts: str) -> str:
        return f"{self._prefix}{{{tenant}}}:" + ":".join(parts)

    def _budget_keys(self, rule: BudgetRule, pid: str) -> tuple[str, str]:
        h = self._key(rule.tenant, "budget", rule.period, pid)
        return h, h + ":holds"

    def _prepare(self, plan: Plan) -> _Prepared:
        p = self._prepared.get(id(plan))
        if p is None:
            # Keyed by id(): the _Prepared keeps the plan alive, so the id is not reused.
            p = _Prepared(
                plan,
                tuple(self._key(plan.tenant, r.key) for r in plan.rates),
                tuple(self._key(plan.tenant, c.key) for c in plan.concurrency),
                tuple(i for i, r in enumerate(plan.rates) if r.kind == "tpm"),
                tuple(r.limit for r in plan.rates),
                tuple(c.limit for c in plan.concurrency))
            if len(self._prepared) >= 100_000:  # plans are bounded; this guards memory
                self._prepared.clear()
            self._prepared[id(plan)] = p
        return p

    # -- admission -------------------------------------------------------------------------

    async def admit(self, principal: Principal, model: str, estimate: Estimate) -> Reservation:
        plan = self._rules.plan(principal, model)
        reservation = Reservation(principal, model, estimate)
        if plan.empty:
            return reservation  # open mode and unlimited tenants never touch Redis
        p = self._prepare(plan)
        wall = self._wall()
        cost_nano = b.to_nano(estimate.cost_usd)
        periods = tuple(b.period_id(r.period, wall) for r in plan.budgets)
        hold = Hold(new_id(), plan, estimate.tokens, cost_nano, periods)
        if time.monotonic() < self._down_until:
            return self._store_down(reservation, hold, None)
        keys: list[str] = [*p.rate_keys, *p.conc_keys]
        args: list[str | int] = [hold.id, self._lease_us, len(plan.rates),
                                 len(plan.concurrency), len(plan.budgets)]
        for rate, limit in zip(plan.rates, p.rate_limits, strict=True):
            args += (limit, 1 if rate.kind == "rpm" else estimate.tokens)
        args += p.conc_limits
        for rule, pid in zip(plan.budgets, periods, strict=True):
            keys += self._budget_keys(rule, pid)
            args += (rule.limit_nano, cost_nano, int(rule.block), _TTL_S[rule.period])
        # Settlements queued since the last round trip ride in this one, ahead of it.
        call = self.settlements.submit(self._admit, keys, args)
        try:
            out = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The client went away mid-admission: the script may still reserve. Give back
            # whatever it took rather than hold a slot and budget until the lease expires.
            call.add_done_callback(lambda f: self._release_orphan(f, reservation, hold))
            raise
        except (TimeoutError, RedisError, OSError) as e:
            return self._store_down(reservation, hold, e)
        return self._decided(reservation, hold, [int(v) for v in out], wall)

    def _release_orphan(self, done: asyncio.Future[Any], reservation: Reservation,
                        hold: Hold) -> None:
        if done.cancelled() or done.exception() is not None or int(done.result()[0]) != 1:
            return
        reservation.handle = hold
        task = asyncio.ensure_future(self.settle(reservation, 0, Decimal(0)))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    def _decided(self, reservation: Reservation, hold: Hold, out: list[int],
                 wall: datetime) -> Reservation:
        """admit.lua's reply (a status, then fields per rate, slot and budget) as the
        reservation, or the refusal it says."""
        plan = hold.plan
        status, pos = out[0], 2
        states: list[RateState] = []
        for rate in plan.rates:
            ok, left, reset_us, retry_us, large = out[pos:pos + 5]
            pos += 5
            cost = 1 if rate.kind == "rpm" else hold.tokens
            states.append(RateState(rate, bool(ok), left, reset_us / 1e6, retry_us / 1e6,
                                    cost, bool(large)))
        refused_slot = None
        for c in plan.concurrency:
            if not out[pos] and refused_slot is None:
                refused_slot = c
            pos += 2
        exceeded = False
        for rule in plan.budgets:
            over, spent, reserved = out[pos:pos + 3]
            pos += 3
            if over and rule.block and status == 2:
                raise b.budget_exceeded(rule, spent, reserved, hold.cost_nano, wall)
            exceeded = exceeded or bool(over)
        if status != 1:
            raise rate_limited(states, refused_slot)
        hold.budget_exceeded = exceeded
        return admitted(reservation, hold, states)

    def _store_down(self, reservation: Reservation, hold: Hold,
                    exc: Exception | None) -> Reservation:
        self.degraded_admissions += 1
        if exc is not None:
            self._failed("admit", exc)
        if not self._fail_open:
            raise ServiceUnavailable(
                "Rate limits cannot be checked: the shared limit store (Redis) is unreachable "
                "and the policy says state.on_redis_error: fail_closed. Retry shortly.",
                headers={"retry-after": "1"})
        # fail_open: admit without reserving; settle still records the usage when it can.
        hold.tokens = hold.cost_nano = 0
        hold.unlimited = True
        reservation.handle = hold
        return reservation

    def _failed(self, operation: str, exc: Exception) -> None:
        self.redis_errors += 1
        now = time.monotonic()
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            self._down_until = now + _DOWN_S
        if self._on_error is not None:
            try:
                self._on_error(operation, exc)
            except Exception:  # a metrics callback must never fail a request
                log.exception("store error callback failed")
        if now - self._last_log >= _LOG_EVERY_S:
            mode = "admitting unlimited" if self._fail_open else "refusing with 503"
            log.error("Redis %s failed (%s: %s); %s (%d more failures not logged)",
                      operation, type(exc).__name__, exc, mode, self._suppressed)
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1

    # -- settlement ------------------------------------------------------------------------

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        hold = take_hold(reservation)
        if hold is None:
            return
        plan = hold.plan
        p = self._prepare(plan)
        keys: list[str] = [p.rate_keys[i] for i in p.tpm]
        keys += p.conc_keys
        args: list[str | int] = [hold.id, len(p.tpm), len(plan.concurrency), len(plan.budgets)]
        for i in p.tpm:
            args += (p.rate_limits[i], tokens - hold.tokens)
        actual = b.to_nano(cost_usd)
        for rule, pid in zip(plan.budgets, hold.periods, strict=True):
            keys += self._budget_keys(rule, pid)
            args += (actual, _TTL_S[rule.period], ",".join(map(str, rule.thresholds)))
        try:
            out = await self.settlements.call(keys, args)
        except (TimeoutError, RedisError, OSError) as e:
            # Slots and holds expire with their lease; the spend is rebuilt from the ledger.
            self._failed("settle", e)
            return
        for j, (rule, pid) in enumerate(zip(plan.budgets, hold.periods, strict=True)):
            fired, reached, spent = (int(v) for v in out[3 * j:3 * j + 3])
            if reached > fired:
                self.budget_alerts += b.fire_alerts(rule, pid, fired, reached, spent,
                                                    self._on_alert)

    # -- budgets at start and for the admin API -------------------------------------------

    async def restore_spend(self, spent: Mapping[str, tuple[Decimal, Decimal]]) -> None:
        wall = self._wall()
        keys: list[str] = []
        args: list[str | int] = []
        for tenant, (month, day) in spent.items():
            for rule in self._rules.budgets(tenant):
                nano = b.to_nano(month if rule.period == "month" else day)
                keys.append(self._budget_keys(rule, b.period_id(rule.period, wall))[0])
                args += (nano, b.crossed(rule.thresholds, nano), _TTL_S[rule.period])
        if keys:
            await self._restore(keys, args)

    async def budget_status(self, tenant: str) -> list[b.BudgetStatus]:
        wall = self._wall()
        out = []
        for rule in self._rules.budgets(tenant):
            pid = b.period_id(rule.period, wall)
            spent, reserved = await self._redis.hmget(self._budget_keys(rule, pid)[0],
                                                      ["spent", "reserved"])
            out.append(budget_status(rule, pid, int(spent or 0), int(reserved or 0), wall))
        return out

    async def close(self) -> None:
        if self._orphans:
            await asyncio.gather(*self._orphans, return_exceptions=True)
        await self.settlements.close()  # what is queued goes now, not after the window
        await self._redis.aclose()
