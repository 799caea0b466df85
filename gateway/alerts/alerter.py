"""Alerts from the gateway's own events to the policy's webhooks (`alerts:`, docs/alerts.md).

Three detectors feed `Alerter`, each through a seam that already existed:
- `budget_alert`: the limiter's budget-alert sink. The limiter fires each `budget.alerts`
  fraction once per tenant, budget and period — across replicas too, since with Redis the
  crossing is decided inside settle.lua — so this only forwards it.
- `request_settled`: the settler calls it for every finished request; a 402
  `budget_exceeded` makes a `budget_exhausted` event, once per tenant, budget and period
  (claimed in Redis with SET NX when the policy has `state.redis_url`, else in memory).
- `circuit_opened`: the circuit breaker's listener (routing/health.py), when a deployment's
  breaker goes from closed to open on this replica.
None of them waits: events go to the `Dispatcher`'s queue, looked up work (a budget's status
for the 402 case) runs as a task.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.alerts.delivery import Dispatcher
from gateway.alerts.events import (
    AlertEvent,
    budget_exhausted_data,
    budget_threshold_data,
    circuit_open_data,
)
from gateway.alerts.once import MemoryOnce, Once, RedisOnce
from gateway.alerts.outbox import Outbox
from gateway.limits.budget import BudgetAlert, BudgetStatus, period_id
from gateway.limits.rules import PeriodKind
from gateway.policy.alerts import EVENT_TYPES, EventType, Webhook
from gateway.policy.models import Policy

log = logging.getLogger("gateway.alerts")


class Alerter:
    """The app's alerts. `emit(event_type, payload, tenant=...)` is the public entry point
    (rollouts send their transitions through it); call it on the event loop."""

    def __init__(self, policy: Policy | None = None, *, metrics: Any = None,
                 limiter: Any = None) -> None:
        self._policy = policy if policy is not None else Policy()
        # A gateway's alerter keeps its deliveries in the ledger's database (outbox.py); one
        # built without a policy (a test's) keeps them in memory.
        outbox = None if policy is None else Outbox(policy.ledger.url,
                                                    policy.ledger.schema_name)
        self.dispatcher = Dispatcher(self._policy.alerts, metrics, outbox=outbox)
        # Read for a tenant's budget status when a 402 may report exhaustion.
        self.limiter = limiter
        self._once: Once = MemoryOnce()
        self._replica = socket.gethostname()
        self._checking: set[str] = set()
        # (tenant, period) -> the period id whose exhaustion was already reported.
        self._reported: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def update(self, policy: Policy) -> None:
        """A reloaded policy: its webhooks receive the events from now on."""
        self._policy = policy
        self.dispatcher.configure(policy.alerts)

    async def start(self) -> None:
        state = self._policy.state
        if state.redis_url:
            self._once = RedisOnce(state.redis_url, state.key_prefix)
        await self.dispatcher.start()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.close()
        await self._once.close()

    # ---- the public entry point --------------------------------------------------------------

    def emit(self, event_type: EventType, payload: Mapping[str, Any], *,
             tenant: str | None = None) -> int:
        """Send one event to every webhook subscribed to `event_type` (and, for an event about
        a tenant, to that tenant). Returns how many deliveries were queued or dropped; never
        waits. `payload` becomes the envelope's `data` (JSON; a `message` string is what a
        Slack webhook shows of a `rollout` event)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown alert event type {event_type!r}; one of "
                             f"{', '.join(EVENT_TYPES)}")
        hooks = self._subscribers(event_type, tenant)
        if not hooks:
            return 0
        event = AlertEvent(event_type, dict(payload), tenant, self._replica)
        for hook in hooks:
            self.dispatcher.submit(event, hook)
        return len(hooks)

    def _subscribers(self, event_type: str, tenant: str | None) -> list[Webhook]:
        return [w for w in self._policy.alerts.webhooks if event_type in w.events
                and (tenant is None or w.tenants is None or tenant in w.tenants)]

    # ---- detectors ---------------------------------------------------------------------------

    def budget_alert(self, alert: BudgetAlert) -> None:
        """The limiter's sink: a tenant's spend crossed a `budget.alerts` fraction."""
        self._guarded(lambda: self.emit("budget_threshold", budget_threshold_data(alert),
                                        tenant=alert.tenant))

    def circuit_opened(self, deployment_id: str, cooldown_s: float) -> None:
        """The breaker's listener: `deployment_id` is out of rotation for `cooldown_s`."""
        def go() -> None:
            models = [name for name, route in self._policy.models.items()
                      if any(d.id == deployment_id for d in route.deployments)]
            provider = next((d.provider for name in models
                             for d in self._policy.models[name].deployments
                             if d.id == deployment_id), None)
            self.emit("circuit_open", circuit_open_data(deployment_id, provider, models,
                                                        cooldown_s))
        self._guarded(go)

    def request_settled(self, record: Any) -> None:
        """The settler's listener, for every finished request: a 402 may report exhaustion."""
        if record.status != 402 or record.error_code != "budget_exceeded":
            return
        tenant = record.tenant
        if tenant in self._checking or not self._subscribers("budget_exhausted", tenant):
            return
        cfg = self._policy.tenants.get(tenant)
        budget = cfg.budget if cfg is not None else None
        if budget is None:
            return
        now = datetime.now(UTC)
        limits: tuple[tuple[PeriodKind, Any], ...] = (("month", budget.monthly_usd),
                                                      ("day", budget.daily_usd))
        periods = [p for p, limit in limits if limit is not None]
        if all(self._reported.get((tenant, p)) == period_id(p, now) for p in periods):
            return  # every budget's exhaustion this period is reported: no lookup
        self._checking.add(tenant)
        self._spawn(self._exhausted(tenant, budget.on_exceed))

    async def _exhausted(self, tenant: str, on_exceed: str) -> None:
        try:
            if self.limiter is None:
                return
            statuses: list[BudgetStatus] = await self.limiter.budget_status(tenant)
            # The budget that refused: one used up, else (the request's worst case did not
            # fit) the one with least left.
            chosen = [s for s in statuses if s.spent_usd + s.reserved_usd >= s.limit_usd]
            if not chosen and statuses:
                chosen = [min(statuses, key=lambda s: s.limit_usd - s.spent_usd
                              - s.reserved_usd)]
            for s in chosen:
                if self._reported.get((tenant, s.period)) == s.period_id:
                    continue
                ttl = int((s.resets_at - datetime.now(UTC)).total_seconds()) + 86400
                key = f"{{{tenant}}}:alert:budget_exhausted:{s.period}:{s.period_id}"
                first = await self._once.claim(key, max(ttl, 60))
                self._reported[(tenant, s.period)] = s.period_id
                if first:
                    self.emit("budget_exhausted", budget_exhausted_data(tenant, s, on_exceed),
                              tenant=tenant)
        except Exception:
            log.warning("could not check tenant %r's budgets for an exhaustion alert", tenant,
                        exc_info=True)
        finally:
            self._checking.discard(tenant)

    # ---- plumbing ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _guarded(fn: Any) -> None:
        try:
            fn()
        except Exception:  # an alert must never fail the request that caused it
            log.exception("alert could not be queued")

    @property
    def busy(self) -> bool:
        """Checks running or deliveries not finished (tests wait for quiet with it)."""
        return bool(self._tasks) or self.dispatcher.pending > 0

    def deliveries(self) -> list[dict[str, Any]]:
        """The delivery log, newest first (`GET /admin/alerts/deliveries`)."""
        return [d.public() for d in reversed(self.dispatcher.log)]
