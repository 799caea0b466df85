"""The controller on its in-memory store with a hand-driven clock: steps, promotion, rollback,
control, a restarted replica resuming, and sticky arms."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.call import Call
from gateway.policy.models import Policy
from gateway.rollouts.controller import RolloutController, UnknownRollout
from gateway.rollouts.store import MemoryStore


def policy(**rollout: Any) -> Policy:
    return Policy.model_validate({
        "providers": {"p": {"kind": "vllm", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"chat": {
            "deployments": [{"provider": "p", "model": "v1"}, {"provider": "p", "model": "v2"}],
            "rollout": {"candidate": {"deployments": ["p/v2"]},
                        "steps": [{"percent": 10, "min_duration_s": 10, "min_requests": 20},
                                  {"percent": 50, "min_duration_s": 10, "min_requests": 20}],
                        "gates": {"latency_p95": {"max_ratio": 1.2},
                                  "error_rate": {"max_ratio": 2}},
                        "min_samples": 20, **rollout}}}})


def record(i: int, arm: str, latency: float, status: int = 200) -> RequestRecord:
    dep = "p/v2" if arm == "candidate" else "p/v1"
    a = AttemptRecord(dep, "p", dep[2:], "ok" if status == 200 else "error", status,
                      Usage(output=10), latency * 1000)
    a.cost_usd = Decimal("0.001")
    r = RequestRecord(f"r{i}", datetime.now(UTC), "t", "k", "chat", "chat", False, status,
                      latency * 1000)
    r.attempts.append(a)
    r.rollout_arm = arm
    return r


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed(ctl: RolloutController, n: int, cand_latency: float, start: int = 0,
         cand_status: int = 200) -> None:
    rng = random.Random(start)
    for i in range(start, start + n):
        ctl.observe(record(i, "baseline", rng.uniform(0.9, 1.1)))
        ctl.observe(record(10**6 + i, "candidate", cand_latency * rng.uniform(0.9, 1.1),
                           cand_status))


def test_steps_then_promotes_when_every_gate_holds() -> None:
    async def go() -> None:
        clock = Clock()
        ctl = RolloutController(MemoryStore(), clock=clock)
        ctl.set_policy(policy())
        await ctl.tick()
        ro = ctl.rollouts["chat"]
        assert (ro.state.status, ro.percent) == ("running", 10)
        feed(ctl, 50, 1.0)
        await ctl.tick()
        assert ro.state.step == 0  # the step's minimum duration has not passed
        clock.now += 11
        await ctl.tick()
        assert (ro.state.step, ro.percent) == (1, 50)
        feed(ctl, 50, 1.0, start=100)
        clock.now += 11
        await ctl.tick()
        assert (ro.state.status, ro.percent) == ("promoted", 100)
    asyncio.run(go())


@pytest.mark.parametrize(("latency", "status", "gate"), [(2.0, 200, "latency_p95"),
                                                         (1.0, 503, "error_rate")])
def test_rolls_back_at_once_on_a_breach(latency: float, status: int, gate: str) -> None:
    async def go() -> None:
        ctl = RolloutController(MemoryStore(), clock=Clock())
        ctl.set_policy(policy())
        await ctl.tick()
        feed(ctl, 40, latency, cand_status=status)
        await ctl.tick()  # no wait for the step's duration: a breach acts now
        ro = ctl.rollouts["chat"]
        assert (ro.state.status, ro.percent) == ("rolled_back", 0)
        assert gate in ro.state.reason and "n=40" in ro.state.reason
    asyncio.run(go())


def test_a_restarted_replica_resumes_from_the_shared_state() -> None:
    async def go() -> None:
        store, clock = MemoryStore(), Clock()
        a = RolloutController(store, clock=clock)
        a.set_policy(policy())
        await a.tick()
        feed(a, 30, 1.0)
        clock.now += 11
        await a.tick()
        assert a.rollouts["chat"].state.step == 1
        b = RolloutController(store, clock=clock)  # a new process, same store
        b.set_policy(policy())
        await b.tick()
        assert (b.rollouts["chat"].state.step, b.rollouts["chat"].percent) == (1, 50)
    asyncio.run(go())


def test_pause_holds_the_step_and_resume_restarts_it() -> None:
    async def go() -> None:
        clock = Clock()
        ctl = RolloutController(MemoryStore(), clock=clock)
        ctl.set_policy(policy())
        await ctl.tick()
        out = await ctl.control("chat", "pause")
        assert out["status"] == "paused"
        feed(ctl, 50, 1.0)
        clock.now += 60
        await ctl.tick()
        assert ctl.rollouts["chat"].state.step == 0
        with pytest.raises(ValueError, match="cannot pause"):
            await ctl.control("chat", "pause")
        await ctl.control("chat", "resume")
        clock.now += 11
        await ctl.tick()
        assert ctl.rollouts["chat"].state.step == 1
        await ctl.control("chat", "abort")
        assert ctl.rollouts["chat"].percent == 0
        with pytest.raises(ValueError, match="rolled back"):
            await ctl.control("chat", "resume")
        with pytest.raises(UnknownRollout):
            await ctl.control("other", "pause")
    asyncio.run(go())


def test_sticky_sessions_keep_their_arm_and_the_split_follows_the_percent() -> None:
    ctl = RolloutController(MemoryStore())
    ctl.set_policy(policy())
    ro = ctl.rollouts["chat"]
    assert ro.percent == 0  # nothing for the candidate until the shared state is read
    asyncio.run(ctl.tick())
    assert ro.percent == 10

    def arm(i: int, user: str | None) -> str:
        return ro.arm(Call("chat", "chat", {}, b"", False, f"q{i}", session=user))

    first = {u: arm(0, f"user-{u}") for u in range(2000)}
    assert all(arm(i, f"user-{u}") == first[u] for i in range(1, 4) for u in range(2000))
    share = sum(a == "candidate" for a in first.values()) / 2000
    assert 0.07 < share < 0.13
    ro.percent = 50  # a later step: every candidate session stays on the candidate
    assert all(arm(9, f"user-{u}") == "candidate" for u, a in first.items() if a == "candidate")


def test_a_header_names_the_sticky_key() -> None:
    ctl = RolloutController(MemoryStore())
    ctl.set_policy(policy(sticky="x-conversation"))
    ro = ctl.rollouts["chat"]
    ro.percent = 50
    arms = {ro.arm(Call("chat", "chat", {}, b"", False, f"q{i}",
                        headers={"x-conversation": "c-7"}, session=f"u{i}"))
            for i in range(200)}
    assert len(arms) == 1
    other = {ro.arm(Call("chat", "chat", {}, b"", False, f"q{i}",
                         headers={"x-conversation": f"c-{i}"})) for i in range(200)}
    assert other == {"baseline", "candidate"}


def test_a_changed_candidate_is_a_new_rollout() -> None:
    a = RolloutController(MemoryStore())
    a.set_policy(policy())
    b = RolloutController(MemoryStore())
    b.set_policy(policy(steps=[{"percent": 20}]))
    assert a.rollouts["chat"].id != b.rollouts["chat"].id


def test_measurement_rules_for_errors() -> None:
    from gateway.rollouts.rollout import measure
    from gateway.rollouts.stats import ArmStats

    s = ArmStats()
    cand = frozenset({"p/v2"})
    measure(s, record(1, "candidate", 1.0), cand, shadow=False)
    broken = record(2, "candidate", 1.0)
    broken.stream = True
    broken.attempts[0].outcome = "failed_midstream"  # status stays 200
    measure(s, broken, cand, shadow=False)
    elsewhere = record(3, "baseline", 1.0)  # every candidate deployment was down
    measure(s, elsewhere, cand, shadow=False)
    client_error = record(4, "candidate", 1.0, status=400)
    client_error.attempts[0].outcome = "error"
    measure(s, client_error, cand, shadow=True)
    assert (s.requests, s.served, s.errors, s.replies, s.latency.n) == (4, 3, 2, 1, 1)
