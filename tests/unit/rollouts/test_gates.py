"""Gate verdicts of every kind: a real difference breaches, noise and small samples do not."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.policy.rollouts import Rollout
from gateway.rollouts.gates import all_hold, evaluate, first_breach
from gateway.rollouts.stats import ArmStats, Histogram, bucket_bounds, bucket_of


def rollout(**gates: Any) -> Rollout:
    return Rollout.model_validate({"candidate": {"deployments": ["c"]},
                                   "steps": [{"percent": 5}], "gates": gates,
                                   "min_samples": 100, "confidence": 0.999})


def arm(n: int, *, errors: float = 0, length: float = 0, ttft: float = 0.2,
        tpot: float = 0.02, latency: float = 1.0, cost: float = 0.001,
        seed: int = 1) -> ArmStats:
    """``errors``, ``length``: shares of the ``n`` requests."""
    rng = random.Random(seed)
    e = round(errors * n)
    s = ArmStats(requests=n, served=n, errors=e, replies=n - e, length_cut=round(length * n))
    for _ in range(n):
        noise = rng.lognormvariate(0, 0.3)
        s.ttft.add(ttft * noise)
        s.tpot.add(tpot * rng.lognormvariate(0, 0.3))
        s.latency.add(latency * rng.lognormvariate(0, 0.3))
        c = cost * rng.uniform(0.8, 1.2)
        s.cost_sum += c
        s.cost_sq += c * c
    return s


CASES = [
    # gate, candidate worse, figures of the worse candidate
    ("error_rate", {"max_ratio": 2}, {"errors": 0.1}, {"errors": 0.01}),
    ("error_rate", {"max": 0.02}, {"errors": 0.08}, {"errors": 0.01}),
    ("length_share", {"max_ratio": 1.5}, {"length": 0.15}, {"length": 0.05}),
    ("length_share", {"max": 0.1}, {"length": 0.2}, {"length": 0.05}),
    ("ttft_p95", {"max_ratio": 1.2}, {"ttft": 0.5}, {}),
    ("tpot_p50", {"max_ratio": 1.2}, {"tpot": 0.04}, {}),
    ("tpot_p95", {"max_ratio": 1.2}, {"tpot": 0.04}, {}),
    ("latency_p95", {"max_ratio": 1.2}, {"latency": 2.0}, {}),
    ("cost_per_request", {"max_ratio": 1.1}, {"cost": 0.002}, {}),
]


@pytest.mark.parametrize(("gate", "cfg", "worse", "base"), CASES)
def test_a_real_regression_breaches_the_gate(gate: str, cfg: dict[str, Any],
                                             worse: dict[str, Any], base: dict[str, Any]) -> None:
    r = rollout(**{gate: cfg})
    results = evaluate(r, arm(1000, **worse, seed=2), arm(5000, **base))
    breach = first_breach(results)
    assert breach is not None and breach.gate.startswith(gate)
    assert breach.candidate_n == 1000 and breach.baseline_n == 5000


@pytest.mark.parametrize(("gate", "cfg", "worse", "base"), CASES)
def test_an_equal_candidate_holds_every_gate(gate: str, cfg: dict[str, Any],
                                             worse: dict[str, Any], base: dict[str, Any]) -> None:
    r = rollout(**{gate: cfg})
    results = evaluate(r, arm(1000, **base, seed=2), arm(5000, **base))
    assert all_hold(results), results


@pytest.mark.parametrize(("gate", "cfg", "worse", "base"), CASES)
def test_no_verdict_below_the_minimum_sample(gate: str, cfg: dict[str, Any],
                                             worse: dict[str, Any], base: dict[str, Any]) -> None:
    r = rollout(**{gate: cfg})
    results = evaluate(r, arm(50, **worse, seed=2), arm(5000, **base))
    assert {x.verdict for x in results} == {"wait"}


def test_a_slightly_worse_latency_within_the_ratio_holds() -> None:
    r = rollout(ttft_p95={"max_ratio": 1.2})
    assert all_hold(evaluate(r, arm(2000, ttft=0.21, seed=3), arm(5000)))


def test_breach_reports_both_figures() -> None:
    r = rollout(ttft_p95={"max_ratio": 1.2})
    b = first_breach(evaluate(r, arm(1000, ttft=0.48, seed=2), arm(5000)))
    assert b is not None
    assert b.candidate == pytest.approx(2.4 * b.baseline, rel=0.15)
    assert "candidate" in b.describe() and "baseline" in b.describe()


def test_histogram_quantile_is_within_a_bucket() -> None:
    h = Histogram()
    values = [0.001 * 1.01 ** i for i in range(1000)]
    for v in values:
        h.add(v)
    true_p95 = sorted(values)[949]
    assert h.quantile(0.95) == pytest.approx(true_p95, rel=0.06)
    assert h.above(true_p95) == pytest.approx(50, abs=6)


def test_bucket_edges_cover_their_values() -> None:
    for v in (0.0005, 0.001, 0.0123, 1.0, 37.5, 1e6):
        lo, hi = bucket_bounds(bucket_of(v))
        assert lo <= v < hi or bucket_of(v) == 289


def test_stats_round_trip_through_hash_fields() -> None:
    s = arm(200, errors=0.015, length=0.02)
    back = ArmStats.from_fields({k: str(v) for k, v in s.to_fields().items()})
    assert (back.requests, back.errors, back.length_cut, back.ttft.n) == (200, 3, 4, 200)
    assert back.cost_sum == pytest.approx(s.cost_sum)


def test_a_quantile_gate_with_no_samples_of_its_kind_holds() -> None:
    r = rollout(ttft_p95={"max_ratio": 1.2})
    no_streams = ArmStats(requests=500, served=500, replies=500)
    assert all_hold(evaluate(r, no_streams, ArmStats(requests=5000, replies=5000)))
    assert not all_hold(evaluate(r, ArmStats(requests=50), ArmStats(requests=5000)))
