"""`python -m bench.sim.rollout`: the gateway's rollout controller (gateway/rollouts, the real
code, on its in-memory store) driven by a simulated clock and simulated backends.

Three candidates against one baseline (TTFT lognormal, median 200 ms, σ 0.5; 1 % errors):
- `bad`: TTFT 2.4× the baseline's (so its p95 is 2.4×) — must be rolled back before it has
  served 5 % of the traffic; reported: how many requests it served after the breach became
  detectable (the first moment the gates, evaluated on every request it had completed,
  would have said breach) until the rollback;
- `good`: 5 % faster — must be promoted;
- `equal`: the baseline's twin, over 20 seeds — must never be rolled back.
A table on stdout, JSON in bench/results/rollout-sim.json.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.call import Call
from gateway.policy.models import Policy
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.gates import evaluate, first_breach
from gateway.rollouts.rollout import measure
from gateway.rollouts.stats import ArmStats
from gateway.rollouts.store import MemoryStore

RESULTS = Path(__file__).resolve().parents[1] / "results" / "rollout-sim.json"
RATE_RPS = 100.0
USERS = 5000
TICK_S = 0.5  # the controller's flush-and-decide interval (RolloutController.interval_s)
MAX_S = 3600.0


def policy() -> Policy:
    dep = {"provider": "p", "pricing": [{"input": "1", "output": "2"}]}
    return Policy.model_validate({
        "providers": {"p": {"kind": "vllm", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"chat": {
            "deployments": [{**dep, "model": "v1"}, {**dep, "model": "v2"}],
            "rollout": {
                "candidate": {"deployments": ["p/v2"]},
                "steps": [{"percent": p, "min_duration_s": 60, "min_requests": 100}
                          for p in (1, 5, 25, 50)],
                "gates": {"error_rate": {"max": 0.05, "max_ratio": 2},
                          "ttft_p95": {"max_ratio": 1.2}, "latency_p95": {"max_ratio": 1.2},
                          "tpot_p95": {"max_ratio": 1.2}},
                "min_samples": 50, "confidence": 0.999,
            },
        }},
    })


@dataclass
class Result:
    scenario: str
    seed: int
    outcome: str
    sim_s: float
    requests: int
    candidate_served: int
    candidate_share: float
    detectable_at_s: float | None
    served_after_detectable: int | None
    reason: str


def _record(i: int, arm: str, ttft: float, latency: float, ok: bool, out: int) -> RequestRecord:
    dep = "p/v2" if arm == "candidate" else "p/v1"
    att = AttemptRecord(dep, "p", dep[2:], "ok" if ok else "error", 200 if ok else 503,
                        Usage(input_uncached=20, output=out), latency * 1000)
    att.cost_usd = Decimal(20 + 2 * out) / Decimal(1_000_000)
    rec = RequestRecord(f"r{i}", datetime.now(UTC), "t", "k", "chat", "chat", True,
                        200 if ok else 502, latency * 1000, ttft * 1000 if ok else None)
    rec.attempts.append(att)
    rec.rollout_arm = arm
    return rec


def simulate(factor: float, seed: int, scenario: str) -> Result:
    return asyncio.run(_simulate(factor, seed, scenario))


async def _simulate(factor: float, seed: int, scenario: str) -> Result:
    rng = random.Random(seed)
    clock = [0.0]
    ctl = RolloutController(MemoryStore(), interval_s=TICK_S, clock=lambda: clock[0])
    pol = policy()
    ctl.set_policy(pol)
    ro = ctl.rollouts["chat"]
    ro._rand = rng.random  # seeded split of requests without a sticky key
    await ctl.tick()
    oracle = {"baseline": ArmStats(), "candidate": ArmStats()}
    oracle_step = 0
    done: list[tuple[float, int, RequestRecord]] = []
    t, i, next_tick = 0.0, 0, TICK_S
    served = {"baseline": 0, "candidate": 0}
    detectable: float | None = None
    after = 0
    while t < MAX_S and ro.state.status in ("running", "paused"):
        t += rng.expovariate(RATE_RPS)
        # Completions and ticks due before this arrival, in time order.
        while (done and done[0][0] <= t) or next_tick <= t:
            if done and done[0][0] <= next_tick:
                end, _, rec = heapq.heappop(done)
                clock[0] = end
                ctl.observe(rec)
                if ro.state.step != oracle_step:
                    oracle = {"baseline": ArmStats(), "candidate": ArmStats()}
                    oracle_step = ro.state.step
                _oracle_add(oracle, rec)
                if detectable is None and rec.rollout_arm == "candidate" and first_breach(
                        evaluate(ro.cfg, oracle["candidate"], oracle["baseline"])) is not None:
                    detectable = end
            else:
                clock[0] = next_tick
                await ctl.tick()
                next_tick += TICK_S
        if ro.state.status not in ("running", "paused"):
            break
        clock[0] = t
        i += 1
        call = Call("chat", "chat", {}, b"", True, f"r{i}", session=f"u{rng.randrange(USERS)}")
        arm = ro.arm(call)
        served[arm] += 1
        if arm == "candidate" and detectable is not None:
            after += 1
        f = factor if arm == "candidate" else 1.0
        ttft = 0.2 * math.exp(0.5 * rng.gauss(0, 1)) * f
        out = rng.randint(50, 300)
        tpot = 0.02 * math.exp(0.2 * rng.gauss(0, 1)) * (f if scenario != "bad" else 1.0)
        ok = rng.random() >= 0.01
        latency = ttft + tpot * (out - 1)
        heapq.heappush(done, (t + latency, i, _record(i, arm, ttft, latency, ok, out)))
    total = served["baseline"] + served["candidate"]
    return Result(scenario, seed, ro.state.status, round(t, 1), total, served["candidate"],
                  served["candidate"] / total if total else 0.0,
                  round(detectable, 2) if detectable is not None else None,
                  after if detectable is not None else None, ro.state.reason)


def _oracle_add(oracle: dict[str, ArmStats], rec: RequestRecord) -> None:
    """The oracle counts with the controller's own rules, but sees every request at once."""
    arm = rec.rollout_arm or "baseline"
    measure(oracle[arm], rec, frozenset({"p/v2"}) if arm == "candidate" else None, False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim.rollout", description=__doc__)
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the equal candidate")
    args = ap.parse_args(argv)
    results = [simulate(2.4, 1, "bad"), simulate(0.95, 1, "good")]
    results += [simulate(1.0, s, "equal") for s in range(1, args.seeds + 1)]
    print(f"{'scenario':8} {'seed':>4} {'outcome':12} {'sim s':>7} {'requests':>8} "
          f"{'cand.':>6} {'share':>6} {'detect s':>8} {'after':>5}")
    for r in results:
        print(f"{r.scenario:8} {r.seed:4} {r.outcome:12} {r.sim_s:7.1f} {r.requests:8} "
              f"{r.candidate_served:6} {100 * r.candidate_share:5.2f}% "
              f"{r.detectable_at_s if r.detectable_at_s is not None else '-':>8} "
              f"{r.served_after_detectable if r.served_after_detectable is not None else '-':>5}")
    bad, good, equal = results[0], results[1], results[2:]
    checks: dict[str, Any] = {
        "bad_rolled_back": bad.outcome == "rolled_back",
        "bad_share_under_5pct": bad.candidate_share < 0.05,
        "good_promoted": good.outcome == "promoted",
        "equal_never_rolled_back": all(r.outcome != "rolled_back" for r in equal),
    }
    print(json.dumps(checks))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"checks": checks,
                                   "results": [r.__dict__ for r in results]}, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
