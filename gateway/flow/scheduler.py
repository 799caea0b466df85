"""The flow-control scheduler of one pool: pure logic, no clock of its own, no I/O.

It owns the pool's in-flight count and its queue. A request is admitted at once while the
pool has room and nobody waits; otherwise it is queued under its tenant, in the band of its
tenant's priority. When a slot frees, the next request comes from the highest non-empty band
and, inside it, from the tenant with the least *virtual time* — start-time fair queuing: each
dispatch advances its tenant's clock by ``cost / weight``, and a tenant that wakes up is
brought forward to the band's clock, so idling earns no credit. Every backlogged tenant of a
band is served within a bounded number of dispatches whatever the others send (no
starvation within a class); lower bands wait for higher ones and are shed first.

A request's *cost* is its estimated work (gateway/flow/cost.py: the new tokens it brings and
the tokens it may generate), so fairness counts work, not requests: a tenant whose requests are
twice as long gets half as many. Slots are shared by the same measure: a tenant's *fair share*
is the cost of every request in flight × its weight ÷ the weights of every tenant with requests
running or queued. A tenant within its share may take any free slot; one past it may borrow
idle slots, but never the last `headroom` of them: they stay free so a lighter tenant's next
request starts at once instead of waiting for a flood's request to end. Shares are of the work
in flight, not of the limit, so the tenant using less work than the others (per weight) is
never the one kept out of the headroom, however many slots its short requests hold.

The gateway (`gateway/flow/pool.py`) and the simulator (`bench/sim/flow.py`) drive the same
object; tests drive it directly.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import KeysView
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

QUEUED, DISPATCHED, GONE = 0, 1, 2

# Why a request was not served. `tenant_queue_full` is the tenant's own backlog (429: it sent
# more than it may park here); the others are the pool's saturation (503).
ShedReason = Literal["tenant_queue_full", "queue_full", "evicted", "below_min_priority",
                     "queue_timeout"]


class Ticket(Generic[T]):
    """One request in the scheduler: queued, dispatched (holding a slot) or gone."""

    __slots__ = ("cost", "enqueued", "item", "priority", "seq", "state", "tenant")

    def __init__(self, item: T, tenant: str, priority: int, cost: float, seq: int,
                 enqueued: float) -> None:
        self.item = item
        self.tenant = tenant
        self.priority = priority
        self.cost = cost
        self.seq = seq
        self.enqueued = enqueued
        self.state = QUEUED


class _TenantQueue(Generic[T]):
    __slots__ = ("gen", "live", "name", "queue", "vt", "weight")

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.vt = 0.0
        self.queue: deque[Ticket[T]] = deque()
        self.live = 0
        # Bumped each time the tenant (re)joins the band's heap: older heap entries are stale.
        self.gen = 0


class _Band(Generic[T]):
    __slots__ = ("count", "heap", "priority", "tenants", "vtime")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.vtime = 0.0
        self.count = 0
        self.tenants: dict[str, _TenantQueue[T]] = {}
        self.heap: list[tuple[float, int, int, _TenantQueue[T]]] = []


@dataclass(slots=True)
class Offer(Generic[T]):
    """What `FlowScheduler.offer` did with a request."""

    ticket: Ticket[T]
    outcome: Literal["admitted", "queued", "refused"]
    reason: ShedReason | None = None
    # Requests pushed out of the queue to make room (lower class, or the heaviest tenant of
    # the lowest class): the caller tells each it was shed (`evicted`).
    evicted: list[Ticket[T]] = field(default_factory=list)
    # Others the offer let through (slots kept from a tenant past its share went to them).
    dispatched: list[Ticket[T]] = field(default_factory=list)


class FlowScheduler(Generic[T]):
    def __init__(self, limit: int, *, max_queued: int = 1000, max_queued_per_tenant: int = 100,
                 min_queued_priority: int | None = None, headroom: float = 0.0) -> None:
        self.limit = limit
        self.headroom = headroom
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued_per_tenant
        self.min_queued_priority = min_queued_priority
        self.in_flight = 0
        self.queued = 0
        self._held_at: int | None = None
        self._bands: dict[int, _Band[T]] = {}
        self._order: list[int] = []  # band priorities, highest first
        self._per_tenant: dict[str, int] = {}  # queued, by tenant
        self._running: dict[str, int] = {}  # holding a slot, by tenant
        self._running_cost: dict[str, float] = {}  # their cost, by tenant
        self.cost_in_flight = 0.0
        self._weights: dict[str, float] = {}  # of the tenants running or queued
        self._active_weight = 0.0
        self._seq = 0
        # Mean seconds between releases (EWMA): how fast the queue drains, for Retry-After.
        self._interval: float | None = None
        self._last_release: float | None = None

    # -- capacity ------------------------------------------------------------------------------

    @property
    def cap(self) -> int:
        """Slots the pool may use now: `limit`, or while held (the backends report saturation)
        no more than were in flight when the hold began — finished requests are replaced one
        for one, so the backends' load stays where it was instead of growing."""
        return self.limit if self._held_at is None else min(self.limit, self._held_at)

    def set_hold(self, hold: bool) -> list[Ticket[T]]:
        if hold and self._held_at is None:
            self._held_at = self.in_flight
        elif not hold and self._held_at is not None:
            self._held_at = None
            return self.pump()
        return []

    def set_limits(self, limit: int, max_queued: int, max_queued_per_tenant: int,
                   min_queued_priority: int | None) -> list[Ticket[T]]:
        self.limit = limit
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued_per_tenant
        self.min_queued_priority = min_queued_priority
        return self.pump()

    # -- requests ------------------------------------------------------------------------------

    def offer(self, item: T, tenant: str, priority: int = 0, weight: float = 1.0,
              now: float = 0.0, cost: float = 1.0) -> Offer[T]:
        self._seq += 1
        t = Ticket(item, tenant, priority, cost, self._seq, now)
        self._join(tenant, weight)
        if self.queued == 0 and self.in_flight < self.cap and self._eligible(tenant):
            self._dispatch(t)
            return Offer(t, "admitted")
        offer = self._enqueue(t, weight)
        if offer.outcome == "refused":
            self._leave_if_idle(tenant)
        elif self.in_flight < self.cap:
            # Slots are free but were kept from a tenant past its share: this one may fit.
            offer.dispatched = self.pump()
            if t.state == DISPATCHED:
                offer.outcome = "admitted"
                offer.dispatched.remove(t)
        return offer

    def _enqueue(self, t: Ticket[T], weight: float) -> Offer[T]:
        tenant, priority = t.tenant, t.priority
        t.state = GONE
        mqp = self.min_queued_priority
        if mqp is not None and priority < mqp:
            return Offer(t, "refused", "below_min_priority")
        if self._per_tenant.get(tenant, 0) >= self.max_queued_per_tenant:
            return Offer(t, "refused", "tenant_queue_full")
        evicted: list[Ticket[T]] = []
        if self.queued >= self.max_queued:
            victim = self._victim(tenant, priority, weight)
            if victim is None:
                return Offer(t, "refused", "queue_full")
            self._remove(victim)
            evicted.append(victim)
        t.state = QUEUED
        self._push(t, weight)
        for v in evicted:
            self._leave_if_idle(v.tenant)
        return Offer(t, "queued", evicted=evicted)

    def cancel(self, ticket: Ticket[T]) -> bool:
        """Take a queued request out (timeout, client gone, shutdown). False: it was not
        queued any more (already dispatched: the caller holds a slot it must release)."""
        if ticket.state != QUEUED:
            return False
        self._remove(ticket)
        self._leave_if_idle(ticket.tenant)
        return True

    def release(self, now: float = 0.0, tenant: str | None = None,
                cost: float = 1.0) -> list[Ticket[T]]:
        """A dispatched request (of `tenant`, offered at `cost`) ended: its slot goes to the
        next in line. Returns the requests dispatched now (their state is DISPATCHED, their
        slot counted)."""
        self.in_flight = max(0, self.in_flight - 1)
        # Back to exactly nothing when the pool empties: no float drift across busy spells.
        self.cost_in_flight = self.cost_in_flight - cost if self.in_flight else 0.0
        if tenant is not None and tenant in self._running:
            left = self._running[tenant] - 1
            if left:
                self._running[tenant] = left
                self._running_cost[tenant] -= cost
            else:
                del self._running[tenant]
                del self._running_cost[tenant]
                self._leave_if_idle(tenant)
        if self._last_release is not None:
            gap = now - self._last_release
            self._interval = gap if self._interval is None else 0.9 * self._interval + 0.1 * gap
        self._last_release = now
        return self.pump()

    def pump(self) -> list[Ticket[T]]:
        out: list[Ticket[T]] = []
        while self.queued and self.in_flight < self.cap:
            t = self._next()
            if t is None:
                break
            self._dispatch(t)
            out.append(t)
        return out

    def share(self, tenant: str) -> float:
        """The tenant's fair share of the cost in flight now (it must be running or queued)."""
        total = self._active_weight
        w = self._weights.get(tenant)
        return self.cost_in_flight * w / total if w is not None and total > 0 else (
            self.cost_in_flight)

    def tenants(self) -> KeysView[str]:
        """The tenants with requests running or queued (a live view)."""
        return self._weights.keys()

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def usage(self, tenant: str) -> float:
        """The cost of the tenant's requests in flight."""
        return self._running_cost.get(tenant, 0.0)

    def drain_s(self, ahead: int | None = None) -> float:
        """Seconds until `ahead` more requests (default: all queued) have been dispatched, at
        the recent release rate; 1 s when there is no history yet."""
        n = (self.queued if ahead is None else ahead) + 1
        return n * self._interval if self._interval else 1.0

    def depth(self) -> dict[tuple[int, str], int]:
        """Queued requests by (priority, tenant)."""
        return {(b.priority, q.name): q.live for b in self._bands.values()
                for q in b.tenants.values() if q.live}

    # -- internals -----------------------------------------------------------------------------

    def _join(self, tenant: str, weight: float) -> None:
        old = self._weights.get(tenant)
        if old != weight:
            self._active_weight += weight - (old or 0.0)
            self._weights[tenant] = weight

    def _leave_if_idle(self, tenant: str) -> None:
        if tenant not in self._running and tenant not in self._per_tenant:
            w = self._weights.pop(tenant, None)
            if w is not None:
                self._active_weight -= w
                if not self._weights:
                    self._active_weight = 0.0  # no float drift across idle spells

    def _eligible(self, tenant: str) -> bool:
        """Alone, below its share, or borrowing a slot that is not part of the headroom."""
        used = self._running_cost.get(tenant, 0.0)
        if used <= 0.0 or len(self._weights) == 1:
            return True
        # used < cost_in_flight × weight ÷ active weight, without the division.
        return (used * self._active_weight < self.cost_in_flight * self._weights[tenant]
                or self._borrowable())

    def _borrowable(self) -> bool:
        return self.headroom <= 0 or self.cap - self.in_flight > self.headroom * self.cap

    def _dispatch(self, t: Ticket[T]) -> None:
        t.state = DISPATCHED
        self.in_flight += 1
        self._running[t.tenant] = self._running.get(t.tenant, 0) + 1
        self._running_cost[t.tenant] = self._running_cost.get(t.tenant, 0.0) + t.cost
        self.cost_in_flight += t.cost

    def _band(self, priority: int) -> _Band[T]:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = _Band(priority)
            self._order = sorted(self._bands, reverse=True)
        return band

    def _push(self, t: Ticket[T], weight: float) -> None:
        band = self._band(t.priority)
        q = band.tenants.get(t.tenant)
        if q is None:
            q = band.tenants[t.tenant] = _TenantQueue(t.tenant, weight)
        q.weight = weight
        q.queue.append(t)
        q.live += 1
        band.count += 1
        self.queued += 1
        self._per_tenant[t.tenant] = self._per_tenant.get(t.tenant, 0) + 1
        if q.live == 1:  # (re)joins: no credit for the time it was idle
            q.vt = max(q.vt, band.vtime)
            q.gen += 1
            heapq.heappush(band.heap, (q.vt, t.seq, q.gen, q))

    def _remove(self, t: Ticket[T]) -> None:
        """Mark a queued ticket gone; it is dropped from its deque lazily."""
        t.state = GONE
        band = self._bands[t.priority]
        q = band.tenants[t.tenant]
        self._uncount(band, q, t.tenant)
        if q.live == 0:
            q.queue.clear()
            q.gen += 1  # its heap entry is stale now

    def _uncount(self, band: _Band[T], q: _TenantQueue[T], tenant: str) -> None:
        q.live -= 1
        band.count -= 1
        self.queued -= 1
        left = self._per_tenant[tenant] - 1
        if left:
            self._per_tenant[tenant] = left
        else:
            del self._per_tenant[tenant]

    def _next(self) -> Ticket[T] | None:
        # Once a band that waits had nobody eligible, the headroom is kept for it: lower bands
        # may only borrow beyond it, whatever their own share (priority stays strict).
        above_waits = False
        for p in self._order:
            band = self._bands[p]
            if not band.count:
                continue
            q = self._pick(band, above_waits)
            if q is not None:
                return self._take(band, q)
            above_waits = True
        return None

    def _pick(self, band: _Band[T], above_waits: bool) -> _TenantQueue[T] | None:
        """The band's tenant with the least virtual time that may take a slot now."""
        heap = band.heap
        kept: list[tuple[float, int, int, _TenantQueue[T]]] = []  # past their share
        found = None
        while heap:
            entry = heapq.heappop(heap)
            q = entry[3]
            if entry[2] != q.gen:
                continue  # stale: the tenant left or rejoined since
            if self._borrowable() if above_waits else self._eligible(q.name):
                found = q
                break
            kept.append(entry)
        for entry in kept:
            heapq.heappush(heap, entry)
        return found

    def _take(self, band: _Band[T], q: _TenantQueue[T]) -> Ticket[T]:
        """Dequeue the tenant's oldest request and advance its virtual time."""
        queue = q.queue
        while queue[0].state != QUEUED:
            queue.popleft()
        t = queue.popleft()
        self._uncount(band, q, t.tenant)
        band.vtime = max(band.vtime, q.vt)
        q.vt += t.cost / q.weight
        q.gen += 1
        if q.live:
            while queue[0].state != QUEUED:
                queue.popleft()
            heapq.heappush(band.heap, (q.vt, queue[0].seq, q.gen, q))
        else:
            queue.clear()
        return t

    def _victim(self, tenant: str, priority: int, weight: float) -> Ticket[T] | None:
        """Whom a full queue sheds for a new request: the newest request of the heaviest
        tenant (queued ÷ weight) in the lowest band, if that band is below the newcomer's or
        is its own and the newcomer's tenant is not the heaviest there. None: shed the
        newcomer."""
        lowest = next(p for p in reversed(self._order) if self._bands[p].count)
        if lowest > priority:
            return None
        band = self._bands[lowest]
        heaviest = max((q for q in band.tenants.values() if q.live),
                       key=lambda q: q.live / q.weight)
        if lowest == priority:
            mine = band.tenants.get(tenant)
            mine_load = ((mine.live if mine else 0) + 1) / weight
            if heaviest.name == tenant or mine_load >= heaviest.live / heaviest.weight:
                return None
        for t in reversed(heaviest.queue):
            if t.state == QUEUED:
                return t
        return None  # pragma: no cover - a tenant with live > 0 has a queued ticket
