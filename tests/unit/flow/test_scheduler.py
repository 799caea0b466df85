"""The flow-control scheduler: weighted fairness, strict priority, timeouts (cancel), shedding
order, the hold, and no starvation within a class — pure logic, driven directly."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.flow.scheduler import DISPATCHED, GONE, QUEUED, FlowScheduler, Ticket


def backlog(s: FlowScheduler[str], tenant: str, n: int, priority: int = 0,
            weight: float = 1.0) -> list[Ticket[str]]:
    out = []
    for i in range(n):
        o = s.offer(f"{tenant}{i}", tenant, priority, weight)
        assert o.outcome == "queued", o.reason
        out.append(o.ticket)
    return out


def served(s: FlowScheduler[str], n: int) -> list[str]:
    """Release `n` slots one at a time; the tenants of what they dispatched, in order."""
    out: list[str] = []
    for _ in range(n):
        out += [t.tenant for t in s.release()]
    return out


def full(limit: int = 1, **kw: int) -> FlowScheduler[str]:
    s: FlowScheduler[str] = FlowScheduler(limit, **kw)
    for i in range(limit):
        assert s.offer(f"run{i}", "warm").outcome == "admitted"
    return s


def test_admits_at_once_below_the_limit_and_queues_past_it() -> None:
    s: FlowScheduler[str] = FlowScheduler(2)
    assert s.offer("a", "t").outcome == "admitted"
    assert s.offer("b", "t").outcome == "admitted"
    o = s.offer("c", "t")
    assert o.outcome == "queued" and s.queued == 1 and s.in_flight == 2
    assert [t.item for t in s.release()] == ["c"]
    assert s.in_flight == 2 and s.queued == 0


def test_a_newcomer_queues_behind_waiters_even_when_a_slot_is_free() -> None:
    s = full(1)
    backlog(s, "a", 1)
    s.set_hold(True)  # held: a release does not grow the pool
    s.limit = 5
    assert s.offer("x", "b").outcome == "queued"


@settings(deadline=None)  # a shared CPU must not fail it on time
@given(st.floats(0.1, 10), st.floats(0.1, 10), st.integers(10, 300))
def test_backlogged_tenants_are_served_in_the_ratio_of_their_weights(
        w1: float, w2: float, n: int) -> None:
    s = full(1, max_queued=10_000, max_queued_per_tenant=10_000)
    backlog(s, "a", n, weight=w1)
    backlog(s, "b", n, weight=w2)
    order = served(s, n)
    c = Counter(order)
    # Start-time fair queuing's bound: normalised service differs by at most one request each.
    assert abs(c["a"] / w1 - c["b"] / w2) <= 1 / w1 + 1 / w2 + 1e-9


@settings(deadline=None)
@given(st.lists(st.floats(0.5, 4), min_size=2, max_size=6), st.integers(0, 5))
def test_no_backlogged_tenant_waits_more_than_its_weighted_turn(
        weights: list[float], late: int) -> None:
    """Within one class every backlogged tenant is served at least once in every window of
    sum(weights)/w + #tenants dispatches, whoever floods (no starvation)."""
    s = full(1, max_queued=10_000, max_queued_per_tenant=10_000)
    names = [f"t{i}" for i in range(len(weights))]
    for name, w in zip(names, weights, strict=True):
        backlog(s, name, 200, weight=w)
    order = served(s, 20 * late + 40)
    total = sum(weights)
    for name, w in zip(names, weights, strict=True):
        window = int(total / w) + len(weights) + 1
        seen = [i for i, t in enumerate(order) if t == name]
        assert seen and seen[0] < window
        assert all(b - a <= window for a, b in itertools.pairwise(seen))


def test_a_tenant_that_idled_gets_no_credit_for_it() -> None:
    s = full(1, max_queued=1000, max_queued_per_tenant=1000)
    backlog(s, "flood", 100)
    assert served(s, 50) == ["flood"] * 50
    backlog(s, "late", 10)
    # It alternates with the flood from now on, not ten in a row for its 50 idle dispatches.
    order = served(s, 10)
    assert order.count("late") == 5


def test_a_higher_class_is_always_served_first() -> None:
    s = full(1)
    backlog(s, "batch", 5, priority=-1)
    backlog(s, "inter", 3, priority=10)
    backlog(s, "std", 2, priority=0)
    assert served(s, 10) == ["inter"] * 3 + ["std"] * 2 + ["batch"] * 5


def test_a_cancelled_request_is_never_dispatched() -> None:
    s = full(1)
    a = backlog(s, "a", 3)
    assert s.cancel(a[0]) and a[0].state == GONE and s.queued == 2
    assert not s.cancel(a[0])
    assert [t.item for t in s.release()] == ["a1"]
    assert not s.cancel(a[1])  # dispatched: the caller holds the slot now
    assert a[1].state == DISPATCHED
    assert s.cancel(a[2]) and s.release() == [] and s.in_flight == 0


def test_the_tenant_queue_bound_refuses_only_that_tenant() -> None:
    s = full(1, max_queued_per_tenant=2)
    backlog(s, "flood", 2)
    o = s.offer("x", "flood")
    assert o.outcome == "refused" and o.reason == "tenant_queue_full"
    assert s.offer("y", "neighbour").outcome == "queued"


def test_a_full_queue_sheds_the_lower_class_first() -> None:
    s = full(1, max_queued=3)
    low = backlog(s, "batch", 3, priority=-1)
    o = s.offer("hi", "inter", priority=5)
    assert o.outcome == "queued" and o.evicted == [low[-1]]  # the newest of the lowest class
    assert low[-1].state == GONE
    o = s.offer("lower", "other", priority=-5)
    assert o.outcome == "refused" and o.reason == "queue_full"


def test_a_full_queue_sheds_the_heaviest_tenant_of_the_class_not_a_light_one() -> None:
    s = full(1, max_queued=4)
    flood = backlog(s, "flood", 4)
    o = s.offer("n", "neighbour")
    assert o.outcome == "queued" and o.evicted == [flood[-1]]
    o = s.offer("f", "flood")  # the flood itself, still the heaviest: its newcomer goes
    assert o.outcome == "refused" and o.reason == "queue_full"


def test_a_heavier_weight_may_hold_more_of_a_full_queue() -> None:
    s = full(1, max_queued=4)
    backlog(s, "a", 2, weight=4.0)
    backlog(s, "b", 2)
    o = s.offer("a2", "a", weight=4.0)  # (2+1)/4 < 2/1: b is the heavier
    assert o.outcome == "queued" and o.evicted[0].tenant == "b"


def test_below_min_priority_is_refused_at_once_when_saturated() -> None:
    s = full(1, min_queued_priority=0)
    o = s.offer("x", "batch", priority=-1)
    assert o.outcome == "refused" and o.reason == "below_min_priority"
    s2: FlowScheduler[str] = FlowScheduler(1, min_queued_priority=0)
    assert s2.offer("x", "batch", priority=-1).outcome == "admitted"  # not saturated


def test_the_hold_replaces_finished_requests_one_for_one() -> None:
    s = full(3)
    backlog(s, "a", 5)
    s.set_hold(True)
    s.limit = 10  # even with room in the limit, the held pool does not grow
    assert s.pump() == []
    assert len(s.release()) == 1 and s.in_flight == 3
    assert len(s.set_hold(False)) == 4 and s.in_flight == 7


def test_drain_estimate_follows_the_release_rate() -> None:
    s = full(1)
    backlog(s, "a", 10)
    assert s.drain_s() == 1.0  # no history yet
    for i in range(10):
        s.release(now=i * 0.5)
    assert abs(s.drain_s(3) - 4 * 0.5) < 1e-9


def test_a_tenant_past_its_share_leaves_the_headroom_free() -> None:
    s: FlowScheduler[str] = FlowScheduler(10, headroom=0.3)
    assert all(s.offer(f"f{i}", "flood").outcome == "admitted" for i in range(10))  # alone
    backlog(s, "flood", 5)
    backlog(s, "neighbour", 1)
    assert s.share("flood") == 5.0  # two tenants active now
    assert [t.tenant for t in s.release(tenant="flood")] == ["neighbour"]  # under its share
    # The flood (9 running, share 5) may borrow only while more than 3 slots are free.
    assert [t.tenant for _ in range(3) for t in s.release(tenant="flood")] == []
    assert s.cap - s.in_flight == 3
    assert [t.tenant for t in s.release(tenant="flood")] == ["flood"]
    assert s.cap - s.in_flight == 3
    # The neighbour's next request starts at once: a kept slot is free for it.
    assert s.offer("n2", "neighbour").outcome == "admitted"


def test_a_tenant_alone_may_use_every_slot_whatever_the_headroom() -> None:
    s: FlowScheduler[str] = FlowScheduler(4, headroom=0.9)
    assert [s.offer(str(i), "solo").outcome for i in range(5)] == ["admitted"] * 4 + ["queued"]
    assert len(s.release(tenant="solo")) == 1


def test_the_headroom_kept_for_a_waiting_class_is_not_lent_below_it() -> None:
    s: FlowScheduler[str] = FlowScheduler(4, headroom=0.5)
    for i in range(4):
        s.offer(f"v{i}", "vip", priority=10)
    backlog(s, "vip", 1, priority=10)
    backlog(s, "batch", 2, priority=-1)
    # vip (4 running, share 2) may not borrow the headroom; nor may batch take it, though
    # it is under its own share: strict priority.
    assert s.release(tenant="vip") == [] and s.release(tenant="vip") == []
    # Three free: vip borrows beyond the headroom; with vip's queue empty, batch goes next.
    assert [t.tenant for t in s.release(tenant="vip")] == ["vip", "batch", "batch"]


def test_shares_follow_the_weights_of_the_active_tenants_and_the_work_in_flight() -> None:
    s: FlowScheduler[str] = FlowScheduler(12, headroom=0.5)
    s.offer("a", "a", weight=3.0, cost=100.0)
    s.offer("b", "b", weight=1.0, cost=300.0)
    assert s.cost_in_flight == 400.0
    assert s.share("a") == 300.0 and s.share("b") == 100.0
    assert s.usage("a") == 100.0 and s.usage("b") == 300.0
    s.release(tenant="b", cost=300.0)  # b has nothing running or queued: no longer counted
    assert s.share("a") == 100.0 and s.usage("b") == 0.0


def test_fairness_counts_work_so_a_light_tenant_is_not_held_back_by_a_heavy_one() -> None:
    """Equal weights: the neighbour holds more slots than the flood, but its requests are
    cheap, so it is within its share of the work in flight and may take the headroom; the
    flood, past its share, may not (slot counting would have held the neighbour back)."""
    s: FlowScheduler[str] = FlowScheduler(10, headroom=0.3)
    for i in range(5):
        assert s.offer(f"n{i}", "neighbour", cost=100.0).outcome == "admitted"
    for i in range(2):
        assert s.offer(f"f{i}", "flood", cost=700.0).outcome == "admitted"
    # 7 of 10 running; the 3 free slots are the headroom.
    assert s.offer("f2", "flood", cost=700.0).outcome == "queued"
    assert s.usage("neighbour") < s.share("neighbour") < s.usage("flood")
    for i in range(5, 8):
        assert s.offer(f"n{i}", "neighbour", cost=100.0).outcome == "admitted"
    assert s.in_flight == 10 and s.running("neighbour") == 8 > s.cap / 2
    # A neighbour request ends: the flood, still past its share, does not get the slot.
    assert s.release(tenant="neighbour", cost=100.0) == []
    assert s.offer("n8", "neighbour", cost=100.0).outcome == "admitted"


def test_backlogged_tenants_get_equal_work_not_equal_requests() -> None:
    s = full(1, max_queued=1000, max_queued_per_tenant=1000)
    for i in range(40):
        s.offer(f"l{i}", "long", cost=4.0)
        s.offer(f"s{i}", "short", cost=1.0)
    c = Counter(served(s, 50))
    assert abs(c["short"] - 4 * c["long"]) <= 5  # about four short ones per long one


ops = st.lists(st.one_of(
    st.tuples(st.just("offer"), st.sampled_from("abcd"), st.sampled_from([-1, 0, 2]),
              st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([1.0, 7.0])),
    st.tuples(st.just("release"), st.integers(0, 200)),
    st.tuples(st.just("cancel"), st.integers(0, 200)),
    st.tuples(st.just("hold"), st.booleans()),
    st.tuples(st.just("limit"), st.integers(1, 6)),
), max_size=120)


@settings(max_examples=200, deadline=None)
@given(ops, st.sampled_from([0.0, 0.3]))
def test_any_sequence_keeps_counts_order_and_priority(seq: list[tuple[object, ...]],
                                                      headroom: float) -> None:
    s: FlowScheduler[int] = FlowScheduler(2, max_queued=8, max_queued_per_tenant=5,
                                          min_queued_priority=-1, headroom=headroom)
    tickets: list[Ticket[int]] = []
    running: list[Ticket[int]] = []

    def took(ts: list[Ticket[int]]) -> None:
        for t in ts:
            assert t.state == DISPATCHED
            # Strict priority: nothing of a higher class was left queued, unless (with
            # headroom) the slot was borrowed beyond the headroom kept for that class.
            if headroom == 0 or s.cap - s.in_flight + len(ts) <= headroom * s.cap:
                assert all(q.priority <= t.priority for q in tickets if q.state == QUEUED)
            # FIFO within one tenant and class.
            assert all(q.seq > t.seq for q in tickets if q.state == QUEUED
                       and q.tenant == t.tenant and q.priority == t.priority)
        running.extend(ts)

    for op in seq:
        if op[0] == "offer":
            _, tenant, prio, w, cost = op
            o = s.offer(len(tickets), str(tenant), int(prio), float(w),  # type: ignore[arg-type]
                        cost=float(cost))  # type: ignore[arg-type]
            tickets.append(o.ticket)
            took(o.dispatched)
            if o.outcome == "admitted":
                running.append(o.ticket)
            for v in o.evicted:
                assert v.state == GONE and v.priority <= o.ticket.priority
        elif op[0] == "release" and running:
            done = running.pop(int(op[1]) % len(running))  # type: ignore[call-overload]
            took(s.release(tenant=done.tenant, cost=done.cost))
        elif op[0] == "cancel" and tickets:
            t = tickets[int(op[1]) % len(tickets)]  # type: ignore[call-overload]
            was = t.state
            assert s.cancel(t) == (was == QUEUED)
        elif op[0] == "hold":
            took(s.set_hold(bool(op[1])))
        elif op[0] == "limit":
            took(s.set_limits(int(op[1]), 8, 5, -1))  # type: ignore[call-overload]
        assert s.in_flight == len(running)
        assert s.queued == sum(1 for t in tickets if t.state == QUEUED) <= 8
        assert s.in_flight <= max(s.cap, len(running))
        for name in "abcd":
            assert s.running(name) == sum(1 for t in running if t.tenant == name)
            assert abs(s.usage(name) - sum(t.cost for t in running if t.tenant == name)) < 1e-6
        if s.queued and s.in_flight < s.cap:
            # Work-conserving: a slot stays idle only as headroom, kept from tenants past
            # their share.
            assert headroom > 0 and s.cap - s.in_flight <= headroom * s.cap
            top = max(t.priority for t in tickets if t.state == QUEUED)
            assert all(s.usage(t.tenant) >= s.share(t.tenant) for t in tickets
                       if t.state == QUEUED and t.priority == top)
        depth = s.depth()
        assert sum(depth.values()) == s.queued
        assert all(n <= 5 for n in Counter(t.tenant for t in tickets
                                           if t.state == QUEUED).values())
