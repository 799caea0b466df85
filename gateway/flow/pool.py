"""Flow control in the gateway: one `Pool` per flow-controlled model, kept for the process's
life (a policy reload reconfigures pools, it never drops the requests they hold).

A request `acquire`s a slot before routing; it gets one at once while the pool is below its
limit and nobody waits, otherwise it waits in the pool's `FlowScheduler` until a slot frees
(another request's record closed), its queue timeout passes, its client leaves or the server
shuts down. The slot is given back by `release`, which the stage hangs on the request's record
so it runs exactly once on every way out (`closing.py`).

The limit is `max_in_flight_per_deployment` × the pool's deployments not in cooldown; the pool
is *held* (no growth, one-for-one replacement) while every such deployment's last scrape says
`waiting ≥ max_waiting` or `kv_cache_usage ≥ max_kv_cache_usage`. Everything here is per
replica: N replicas let N × the limit through (docs/routing.md, "Flow control").
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.errors import GatewayError
from gateway.flow.confine import Confinement
from gateway.flow.metrics import FlowMetrics
from gateway.flow.reuse import KvReuse
from gateway.flow.scheduler import FlowScheduler, ShedReason, Ticket
from gateway.policy.flow import FlowControl as FlowPolicy
from gateway.routing.base import Signals

Waiter = asyncio.Future[ShedReason | None]


class FlowShed(GatewayError):
    """Flow control did not serve the request: the pool stayed saturated (503), or the
    tenant's own queue was full (429). Both carry `Retry-After`."""

    status = 503
    type = "service_unavailable"
    code = "flow_shed"


_CODES: dict[str, tuple[int, str, str]] = {
    "queue_timeout": (503, "service_unavailable", "flow_queue_timeout"),
    "tenant_queue_full": (429, "rate_limit_exceeded", "flow_tenant_queue_full"),
    "queue_full": (503, "service_unavailable", "flow_shed"),
    "evicted": (503, "service_unavailable", "flow_shed"),
    "below_min_priority": (503, "service_unavailable", "flow_shed"),
}


def shed_error(model: str, reason: ShedReason, retry_after_s: float,
               cfg: FlowPolicy) -> FlowShed:
    status, type_, code = _CODES[reason]
    after = max(1, min(60, math.ceil(retry_after_s)))
    why = {
        "queue_timeout": f"waited {cfg.queue_timeout_s:g} s in its queue "
                         "(flow_control.queue_timeout_s)",
        "tenant_queue_full": f"your tenant already has {cfg.max_queued_per_tenant} requests "
                             "queued for it (flow_control.max_queued_per_tenant)",
        "queue_full": f"its queue is full ({cfg.max_queued} requests, flow_control.max_queued) "
                      "with requests of equal or higher priority",
        "evicted": "its queue filled up and requests of higher priority, or of tenants "
                   "using less than their share, took this request's place",
        "below_min_priority": "your tenant's priority is below "
                              "flow_control.min_queued_priority, so its requests are not "
                              "queued",
    }[reason]
    e = FlowShed(f"Model {model!r} is at capacity and this request was not served: {why}. "
                 f"Retry after {after} s.", status=status, type=type_, code=code)
    e.headers = {"Retry-After": str(after)}
    return e


class ClientGone(GatewayError):
    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class Pool:
    def __init__(self, model: str, metrics: FlowMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.metrics = metrics
        self.clock = clock
        self.sched: FlowScheduler[Waiter | None] = FlowScheduler(1)
        self.reuse = KvReuse()  # per pool: the churn it charges is of this pool's caches
        self.confinement = Confinement()
        self.cfg = FlowPolicy()
        self.deployments: tuple[str, ...] = ()
        self.active = False
        self._snapshot: Callable[[], Signals] = lambda: Signals(loads={})
        self._cooling: Callable[[str], float] = lambda _d: 0.0
        self._timer: asyncio.TimerHandle | None = None
        if metrics is not None:
            metrics.watch(model, lambda: self.sched.in_flight, lambda: self.sched.cap)

    def configure(self, cfg: FlowPolicy | None, deployments: Sequence[str],
                  snapshot: Callable[[], Signals], cooling: Callable[[str], float]) -> None:
        """A (re)loaded policy's settings. None: this model is no longer flow-controlled —
        everyone queued is let through, and slots still held are given back as they end."""
        self.active = cfg is not None
        self.cfg = cfg or FlowPolicy()
        self.deployments = tuple(deployments)
        self._snapshot = snapshot
        self._cooling = cooling
        c = self.cfg
        limit = self._limit() if cfg is not None else 1 << 30
        self.sched.headroom = c.headroom
        self.reuse.weight = c.single_use_kv_weight
        self.reuse.track = c.single_use_backends is not None
        self.confinement.share = c.single_use_backends
        self._wake(self.sched.set_limits(limit, c.max_queued, c.max_queued_per_tenant,
                                         c.min_queued_priority))

    # -- the request path ----------------------------------------------------------------------

    def cost(self, tenant: str, body: Mapping[str, Any]) -> float:
        """What a request of `tenant` costs in this pool's fair shares (gateway/flow/cost.py,
        charged for cache churn by gateway/flow/reuse.py)."""
        return self.reuse.cost(tenant, body, self.cfg.expected_output_tokens)

    def confine(self, tenant: str) -> frozenset[str] | None:
        """The deployments a request of `tenant` holding a slot should be routed to, or None:
        any (gateway/flow/confine.py)."""
        if self.confinement.share is None:
            return None
        up = [d for d in self.deployments if self._cooling(d) <= 0]
        return self.confinement.deployments(tenant, self.reuse, up, self.sched.tenants())

    async def acquire(self, tenant: str, priority: int, weight: float,
                      receive: Callable[[], Awaitable[Any]] | None, cost: float = 1.0) -> None:
        """Return once the request (of estimated `cost`, gateway/flow/cost.py) holds a slot
        (then `release` with the same cost must follow, exactly once); raise `FlowShed` or
        `ClientGone` when it will not get one (it then holds nothing)."""
        sched = self.sched
        self._refresh()
        now = self.clock()
        offer = sched.offer(None, tenant, priority, weight, now, cost)
        for victim in offer.evicted:
            self._queued(victim, -1)
            if victim.item is not None and not victim.item.done():
                victim.item.set_result("evicted")
        self._wake(offer.dispatched)
        if offer.outcome == "admitted":
            return
        if offer.outcome == "refused":
            assert offer.reason is not None
            raise self._shed(offer.ticket, offer.reason)
        ticket = offer.ticket
        fut: Waiter = asyncio.get_running_loop().create_future()
        ticket.item = fut
        self._queued(ticket, 1)
        self._arm()
        await self._wait(ticket, fut, receive)

    async def _wait(self, ticket: Ticket[Waiter | None], fut: Waiter,
                    receive: Callable[[], Awaitable[Any]] | None) -> None:
        gone: asyncio.Task[None] | None = None
        if receive is not None:
            gone = asyncio.ensure_future(_disconnect(receive))
        try:
            waits: set[asyncio.Future[Any]] = {fut} if gone is None else {fut, gone}
            await asyncio.wait(waits, timeout=self.cfg.queue_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled (shutdown, the server's own timeout): leave the queue, or give back
            # the slot if it was granted in the same instant.
            if not self._leave(ticket):
                self.release(ticket.tenant, ticket.cost)
            raise
        finally:
            if gone is not None:
                gone.cancel()
        if fut.done():
            reason = fut.result()
            if reason is None:
                self._waited(ticket)
                return
            raise self._shed(ticket, reason)
        left = self._leave(ticket)
        if not left:  # dispatched after the wait returned: keep the slot
            self._waited(ticket)
            return
        if gone is not None and gone.done() and not gone.cancelled():
            self._count_shed(ticket, "client_gone")
            raise ClientGone("The client closed the connection while the request was queued.")
        raise self._shed(ticket, "queue_timeout")

    def release(self, tenant: str, cost: float = 1.0) -> None:
        """A request of `tenant` holding a slot (acquired at `cost`) ended (its record
        closed)."""
        if self.sched.queued:  # the limit or the hold may have moved since it was read
            self._refresh()
        self._wake(self.sched.release(self.clock(), tenant, cost))

    # -- internals -----------------------------------------------------------------------------

    def _leave(self, ticket: Ticket[Waiter | None]) -> bool:
        """Take a waiting request out of the queue. False: it had been dispatched (it holds
        a slot: give it back)."""
        if self.sched.cancel(ticket):
            self._queued(ticket, -1)
            return True
        if ticket.item is not None and ticket.item.done() and ticket.item.result() is None:
            return False
        return True  # evicted: it holds nothing

    def _limit(self) -> int:
        up = sum(1 for d in self.deployments if self._cooling(d) <= 0)
        # With every deployment down the router refuses at once; queuing would only delay it.
        return self.cfg.max_in_flight_per_deployment * (up or len(self.deployments) or 1)

    def _saturated(self) -> bool:
        c = self.cfg
        if c.max_waiting is None and c.max_kv_cache_usage is None:
            return False
        loads = self._snapshot().loads
        for d in self.deployments:
            load = loads.get(d)
            if load is None:
                return False
            full = (c.max_waiting is not None and load.waiting is not None
                    and load.waiting >= c.max_waiting) or (
                c.max_kv_cache_usage is not None and load.kv_cache_usage is not None
                and load.kv_cache_usage >= c.max_kv_cache_usage)
            if not full:
                return False
        return bool(self.deployments)

    def _refresh(self) -> None:
        if not self.active:
            return
        sched = self.sched
        limit = self._limit()
        woken = sched.set_hold(self._saturated())
        if limit != sched.limit:
            c = self.cfg
            woken += sched.set_limits(limit, c.max_queued, c.max_queued_per_tenant,
                                      c.min_queued_priority)
        self._wake(woken)

    def _wake(self, tickets: list[Ticket[Waiter | None]]) -> None:
        for t in tickets:
            self._queued(t, -1)
            if t.item is not None and not t.item.done():
                t.item.set_result(None)

    def _arm(self) -> None:
        """While anyone waits, re-read the signals every `recheck_s`: a scrape or a
        deployment back from cooldown can free slots without any request ending."""
        if self._timer is None and self.sched.queued:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.cfg.recheck_s, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        self._refresh()
        self._arm()

    def _shed(self, ticket: Ticket[Waiter | None], reason: ShedReason) -> FlowShed:
        self._count_shed(ticket, reason)
        return shed_error(self.model, reason, self.sched.drain_s(), self.cfg)

    def _count_shed(self, ticket: Ticket[Waiter | None], reason: str) -> None:
        if self.metrics is not None:
            self.metrics.shed(self.model, ticket.priority, ticket.tenant, reason)

    def _queued(self, ticket: Ticket[Waiter | None], delta: int) -> None:
        if self.metrics is not None:
            self.metrics.queued(self.model, ticket.priority, ticket.tenant, delta)

    def _waited(self, ticket: Ticket[Waiter | None]) -> None:
        if self.metrics is not None:
            self.metrics.waited(self.model, ticket.priority, ticket.tenant,
                                self.clock() - ticket.enqueued)


async def _disconnect(receive: Callable[[], Awaitable[Any]]) -> None:
    """Return when the client's connection reports `http.disconnect` (the body was read
    already, so nothing else arrives)."""
    while True:
        msg = await receive()
        if msg.get("type") == "http.disconnect":
            return
