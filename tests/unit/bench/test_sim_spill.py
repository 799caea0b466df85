"""The spill experiment's own logic: the cost per 1,000 turns, the external provider, and the
gateway's router on a small cluster (everything self-hosted at low load, everything external
for `external`, part of it spilled past capacity). Counts only, no timing."""

from __future__ import annotations

import dataclasses

import pytest

from bench.sim.backend import Request
from bench.sim.cluster import run
from bench.sim.spill import ExternalProvider, PlanStrategy, config, cost_per_1k


def test_gpu_hours_are_paid_idle_or_busy_and_the_provider_per_token() -> None:
    # 8 GPUs x $2.50 for one hour over 100,000 turns: $0.20 per 1,000; 1M + 1M tokens at
    # $0.18 / M each: $0.36 over the same turns.
    c = cost_per_1k(100_000, 3600.0, 8, 2.5, 1_000_000, 1_000_000, (0.18, 0.18))
    assert c["gpu_usd_per_1k"] == pytest.approx(0.20)
    assert c["external_usd_per_1k"] == pytest.approx(0.0036)
    assert c["usd_per_1k"] == pytest.approx(0.2036)
    half = cost_per_1k(50_000, 3600.0, 8, 2.5, 0, 0)
    assert half["gpu_usd_per_1k"] == pytest.approx(0.40)  # half the turns: twice the share
    assert cost_per_1k(0, 3600.0, 8, 2.5, 0, 0)["usd_per_1k"] == 0.0


def test_the_external_provider_has_no_queue_and_an_error_costs_a_retry() -> None:
    ok = ExternalProvider(1, ttft_median_s=0.3, sigma=0.0, tokens_per_s=100.0, error_rate=0.0)
    r = Request(1, 0, 10.0, 1000, 101, [], measured=True)
    assert ok.send(r, "ext", 10.0) == pytest.approx(10.0 + 0.3 + 1.0)
    assert r.first_token == pytest.approx(10.3) and not ok.failed
    bad = ExternalProvider(1, ttft_median_s=0.3, sigma=0.0, error_rate=1.0, error_s=0.5)
    r2 = Request(2, 0, 10.0, 1000, 1, [], measured=True)
    bad.send(r2, "ext", 10.0)
    assert r2.first_token == pytest.approx(10.8) and bad.failed == {(2, 0)}


def _run(load: str, setup: str) -> tuple[int, int, PlanStrategy]:
    cfg = dataclasses.replace(config(load, 3, 40.0, 10.0), backends=2)
    strategy = PlanStrategy(setup, 3, cfg.backends)
    out = run(cfg, "prefix-load", strategy=strategy, external=ExternalProvider(3))
    outside = sum(1 for r in out.requests if r.backend < 0)
    return outside, len(out.requests), strategy


def test_the_gateway_s_router_keeps_a_quiet_pool_home_and_spills_past_capacity() -> None:
    outside, total, _ = _run("0.5", "spill 250")
    assert total > 0 and outside == 0
    outside, total, _ = _run("0.5", "external")
    assert outside == total
    # 4x, not 3x: in 40 s the turn rate is still ramping up (a session's later turns come
    # 15 s apart), and with hot prefixes (gateway/routing/prefix_heat.py) the two backends
    # balance a shared system prompt's turns well enough that 3x queued too little to spill.
    outside, total, strategy = _run("4.0", "spill 250")
    assert 0 < outside < total
    assert strategy.reasons["spill"] > 0
