"""The gateway's pool over the scheduler: slots given back on every path, sheds as errors with
Retry-After, the hold from scraped gauges, and a reload that stops controlling a model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.flow.confine import rendezvous
from gateway.flow.pool import ClientGone, FlowShed, Pool
from gateway.policy.flow import FlowControl
from gateway.routing.base import EndpointLoad, Signals


def pool(signals: dict[str, EndpointLoad] | None = None, **cfg: Any) -> Pool:
    p = Pool("llama")
    snap = Signals(loads=signals if signals is not None else {})
    p.configure(FlowControl(max_in_flight_per_deployment=1, **cfg), ["a", "b"],
                lambda: snap, lambda _d: 0.0)
    return p


async def _fill(p: Pool) -> None:
    """Take both slots (two deployments, one each) for tenant `a`."""
    for _ in range(2):
        await p.acquire("a", 0, 1.0, None)


async def _started(p: Pool, tenant: str, receive: Callable[[], Awaitable[Any]] | None = None,
                   priority: int = 0) -> asyncio.Task[None]:
    task = asyncio.ensure_future(p.acquire(tenant, priority, 1.0, receive))
    await asyncio.sleep(0)
    return task


def test_a_waiter_gets_the_slot_a_finished_request_gives_back() -> None:
    async def run() -> None:
        p = pool()
        await _fill(p)
        waiter = await _started(p, "b")
        assert not waiter.done() and p.sched.queued == 1
        p.release("a")
        await waiter
        assert p.sched.in_flight == 2 and p.sched.queued == 0
    asyncio.run(run())


def test_a_cancelled_waiter_leaves_the_queue_and_holds_nothing() -> None:
    async def run() -> None:
        p = pool()
        await _fill(p)
        waiter = await _started(p, "b")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert p.sched.queued == 0 and p.sched.in_flight == 2
        # Dispatched and cancelled in the same turn of the loop: the slot goes back.
        waiter = await _started(p, "b")
        p.release("a")  # grants the slot to the waiter (its future is set)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert p.sched.in_flight == 1 and p.sched.queued == 0
    asyncio.run(run())


def test_a_timeout_is_a_503_with_retry_after() -> None:
    async def run() -> None:
        p = pool(queue_timeout_s=0.01)
        await _fill(p)
        with pytest.raises(FlowShed) as e:
            await p.acquire("b", 0, 1.0, None)
        assert e.value.status == 503 and e.value.code == "flow_queue_timeout"
        assert int(e.value.headers["Retry-After"]) >= 1
        assert "flow_control.queue_timeout_s" in str(e.value)
        assert p.sched.queued == 0 and p.sched.in_flight == 2
    asyncio.run(run())


def test_a_client_that_leaves_while_queued_gets_client_gone() -> None:
    async def run() -> None:
        p = pool()
        await _fill(p)
        left = asyncio.Event()

        async def receive() -> dict[str, str]:
            await left.wait()
            return {"type": "http.disconnect"}
        waiter = await _started(p, "b", receive)
        left.set()
        with pytest.raises(ClientGone):
            await waiter
        assert p.sched.queued == 0
    asyncio.run(run())


def test_an_evicted_waiter_is_shed_and_a_full_tenant_queue_is_a_429() -> None:
    async def run() -> None:
        p = pool(max_queued=1, max_queued_per_tenant=1)
        await _fill(p)
        low = await _started(p, "batch", priority=-1)
        b = await _started(p, "b")  # the queue is full: the lower class makes room
        with pytest.raises(FlowShed) as shed:
            await low
        assert shed.value.code == "flow_shed" and shed.value.status == 503
        with pytest.raises(FlowShed) as own:
            await p.acquire("b", 0, 1.0, None)  # b has its one queued already
        assert own.value.status == 429 and own.value.code == "flow_tenant_queue_full"
        assert own.value.type == "rate_limit_exceeded"
        p.release("a")
        await b
    asyncio.run(run())


def test_the_pool_is_held_while_every_deployment_reports_a_full_queue() -> None:
    async def run() -> None:
        full = {"a": EndpointLoad(waiting=9), "b": EndpointLoad(waiting=9)}
        p = pool(full, max_waiting=4, recheck_s=0.01)
        waiter = await _started(p, "b")  # held at what was in flight (nothing): it waits
        await asyncio.sleep(0.05)
        assert not waiter.done() and p.sched.cap == 0
        full["a"] = EndpointLoad(waiting=0)  # one deployment drained: the recheck sees it
        await asyncio.wait_for(waiter, 5)
    asyncio.run(run())


def test_a_reload_without_flow_control_lets_the_queue_through() -> None:
    async def run() -> None:
        p = pool()
        await _fill(p)
        waiters = [await _started(p, "b") for _ in range(3)]
        p.configure(None, (), lambda: Signals(loads={}), lambda _d: 0.0)
        await asyncio.gather(*waiters)
        assert p.sched.in_flight == 5
        for _ in range(5):
            p.release("b")
        assert p.sched.in_flight == 0
    asyncio.run(run())


def test_the_pool_charges_single_use_kv_at_the_policy_s_weight() -> None:
    body = {"messages": [{"role": "user", "content": "u" * 400}], "max_tokens": 100}
    assert pool().cost("flood", body) == 200.0  # default 1: the plain estimate
    assert pool(single_use_kv_weight=3).cost("flood", body) == 600.0


def test_the_pool_confines_a_single_use_tenant_to_its_deployments_up() -> None:
    async def run() -> None:
        chat = {"messages": [{"role": "user", "content": "a" * 400},
                             {"role": "assistant", "content": "b" * 1600},
                             {"role": "user", "content": "c" * 400}], "max_tokens": 100}
        single = {"messages": [{"role": "user", "content": "u" * 400}], "max_tokens": 100}
        cooling: dict[str, float] = {}
        p = Pool("llama")
        p.configure(FlowControl(max_in_flight_per_deployment=2, single_use_backends=0.3),
                    ["a", "b", "c"], lambda: Signals(loads={}), lambda d: cooling.get(d, 0.0))
        await p.acquire("main", 0, 1.0, None, p.cost("main", chat))
        await p.acquire("flood", 0, 1.0, None, p.cost("flood", single))
        home = rendezvous("flood", ["a", "b", "c"], 1)
        assert p.confine("flood") == home
        assert p.confine("main") == frozenset({"a", "b", "c"}) - home  # kept off the flood's
        cooling[next(iter(home))] = 5.0  # its deployment cools down: one of the others
        up = sorted({"a", "b", "c"} - home)
        assert p.confine("flood") == rendezvous("flood", up, 1)
        cooling[up[0]] = 5.0  # one left up: nothing to choose
        assert p.confine("flood") is None
        p.release("main", 200.0)
        assert p.confine("flood") is None  # nobody left whose cache it would churn
        p.release("flood", 200.0)
        assert p.confine("main") is None
        off = pool()
        off.cost("flood", single)
        await off.acquire("main", 0, 1.0, None)
        assert off.confine("flood") is None
    asyncio.run(run())
