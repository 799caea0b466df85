"""The rollout store on real Redis (a fresh key prefix): two controllers — two replicas —
add to the same step's counts, a breach both see is announced once, and a new controller
resumes from the state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.rollouts.controller import RolloutController
from gateway.rollouts.events import RolloutEvents
from gateway.rollouts.store import RedisStore
from tests.integration.tenancy_support import REDIS_URL, fresh_prefix
from tests.unit.rollouts.test_controller import Clock, feed, policy


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from fresh_prefix()


def _replica(prefix: str, clock: Clock) -> tuple[RolloutController, CollectorRegistry]:
    registry = CollectorRegistry()
    ctl = RolloutController(RedisStore(REDIS_URL, prefix), RolloutEvents(registry),
                            clock=clock)
    ctl.set_policy(policy())
    return ctl, registry


def _transitions(registry: CollectorRegistry, kind: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "gateway_rollout_transitions_total"
               and s.labels.get("transition") == kind)


def test_two_replicas_share_counts_and_announce_a_rollback_once(prefix: str) -> None:
    async def go() -> None:
        clock = Clock()
        (a, ra), (b, rb) = _replica(prefix, clock), _replica(prefix, clock)
        await a.tick()
        await b.tick()
        assert _transitions(ra, "started") + _transitions(rb, "started") == 1
        feed(a, 12, 1.0)   # neither replica alone has min_samples (20) per arm
        feed(b, 12, 1.0, start=500)
        await a.tick()
        await b.tick()
        s = await a.status("chat")
        assert (s["candidate"]["served"], s["baseline"]["served"]) == (24, 24)
        feed(a, 30, 3.0, start=1000)  # a slow candidate
        feed(b, 30, 3.0, start=2000)
        await asyncio.gather(a.tick(), b.tick())
        await a.tick()
        await b.tick()
        assert a.rollouts["chat"].state.status == b.rollouts["chat"].state.status \
            == "rolled_back"
        assert _transitions(ra, "rolled_back") + _transitions(rb, "rolled_back") == 1
        c, _ = _replica(prefix, clock)  # a replica started now
        await c.tick()
        assert (c.rollouts["chat"].state.status, c.rollouts["chat"].percent) == \
            ("rolled_back", 0)
        for ctl in (a, b, c):
            await ctl.store.close()
    asyncio.run(go())
