"""The routing simulator (bench/sim) on a tiny configuration: it runs the gateway's own
strategies end to end, deterministically, and its cache model behaves like vLLM's."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from bench.sim.__main__ import main, summarize
from bench.sim.backend import Backend, BackendConfig, PrefixCache, Request
from bench.sim.cluster import SimConfig, _keys, backend_configs, capacity_rps, run
from bench.sim.families import FAMILIES, HELDOUT_SEEDS, TUNE_SEEDS
from bench.sim.workload import sessions

TINY = SimConfig(backends=3, duration_s=60.0, warmup_s=10.0, seed=5)


def test_every_strategy_runs_and_reports_sane_numbers(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    assert main(["--backends", "3", "--duration", "60", "--warmup", "10", "--seed", "5",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in result["results"]}
    assert set(rows) == {"round-robin", "least-busy", "prefix-affinity", "prefix-load",
                         "latency", "cost"}
    for r in rows.values():
        assert r["requests"] > 100
        assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"]
        assert 0.0 <= r["prefix_cache_hit_rate"] <= 1.0
    # Sticky sessions hit their own history; round-robin mostly only the system prompts.
    for sticky in ("prefix-affinity", "prefix-load"):
        assert rows[sticky]["prefix_cache_hit_rate"] > rows["round-robin"][
            "prefix_cache_hit_rate"]


def test_runs_are_deterministic_for_a_seed() -> None:
    a = summarize("x", run(TINY, "prefix-affinity"))
    b = summarize("x", run(TINY, "prefix-affinity"))
    assert a == b


def test_round_robin_spreads_requests_evenly() -> None:
    outcome = run(TINY, "weighted")
    counts = [sum(1 for r in outcome.requests if r.backend == i) for i in range(3)]
    assert max(counts) - min(counts) <= 0.05 * sum(counts)


def test_a_later_turn_hits_the_blocks_of_the_previous_prompt_and_reply() -> None:
    block = 16
    turn1 = [(-1, 1000), (1, 100)]
    turn1_all = _keys([*turn1, (2, 200)], block)  # prompt + reply
    turn2 = _keys([*turn1, (2, 200), (3, 50)], block)
    shared = 1300 // block  # full blocks before turn 2's new message
    assert len(turn1_all) == shared  # the reply's last, partial block is not shareable
    assert turn2[:shared] == turn1_all

    be = Backend(0, BackendConfig(block_tokens=block, kv_blocks=1000))
    r1 = Request(0, 0, 0.0, 1100, 200, turn1_all, measured=True)
    r2 = Request(0, 1, 5.0, 1350, 10, turn2, measured=True)
    be.waiting.append(r1)
    now = 0.0
    while r1.finish < 0:
        d = be.start_step()
        assert d is not None
        now += d
        be.finish_step(now)
    assert r1.hit_tokens == 0 and r1.first_token > 0
    be.waiting.append(r2)
    be.start_step()
    assert r2.hit_tokens == shared * block


def test_cache_never_evicts_pinned_blocks_and_evicts_tails_first() -> None:
    cache = PrefixCache(capacity=10)
    assert cache.admit([1, 2, 3, 4], partial_blocks=1) == 0
    assert cache.admit([5, 6, 7, 8, 9, 10], partial_blocks=0) is None  # only 5 free
    cache.release([1, 2, 3, 4], partial_blocks=1)
    # Needs 6 new blocks with 6 free: nothing evicted yet.
    assert cache.admit([5, 6, 7, 8, 9, 10], partial_blocks=0) == 0
    # Needs 2 more: the two least recently freed go, tail first (4, then 3).
    assert cache.admit([11, 12], partial_blocks=0) == 0
    assert set(cache.refs) >= {1, 2} and 3 not in cache.refs and 4 not in cache.refs
    assert cache.admit([1, 2, 3], partial_blocks=0) is None  # 3 would need a block: none free
    cache.release([11, 12], partial_blocks=0)
    assert cache.admit([1, 2, 3], partial_blocks=0) == 2
    assert cache.pinned() == 9


def test_families_are_split_into_tuning_and_held_out_seeds() -> None:
    assert not set(TUNE_SEEDS) & set(HELDOUT_SEEDS)
    assert {"chat-short", "chat-long", "single-turn", "rag", "bursty", "hetero",
            "flood"} <= set(FAMILIES)


def test_rag_family_prefixes_exceed_one_backend_and_fill_70_percent_of_the_cluster() -> None:
    cfg = FAMILIES["rag"].build(HELDOUT_SEEDS[0])
    wl, b = cfg.workload, cfg.backend
    total = wl.system_prompts * sum(wl.system_tokens) / 2
    per_backend = b.kv_blocks * b.block_tokens
    assert wl.system_prompts == 150 and total == 900_000
    assert total > 5 * per_backend
    assert abs(total / (cfg.backends * per_backend) - 0.70) < 0.01


def test_bursty_arrivals_are_on_off_with_the_same_mean_rate() -> None:
    wl = FAMILIES["bursty"].build(1).workload
    got = sessions(wl, 5.0, 200.0, random.Random(3))
    period = wl.burst_on_s + wl.burst_off_s
    assert all(s.start % period < wl.burst_on_s for s in got)
    assert 0.8 * 5.0 * 200 < len(got) < 1.2 * 5.0 * 200


def test_a_slow_backend_takes_longer_steps_and_capacity_counts_it() -> None:
    fast = SimConfig(backends=2)
    slow = SimConfig(backends=2, slow_backends=1, slow_factor=2.0)
    assert backend_configs(slow)[0].step_base_s == 2 * backend_configs(slow)[1].step_base_s
    assert capacity_rps(slow)[0] == pytest.approx(capacity_rps(fast)[0] * 0.75)


def test_flood_family_mixes_two_tenants_with_distinct_sessions() -> None:
    cfg = dataclasses.replace(FAMILIES["flood"].build(1), backends=3, duration_s=40.0,
                              warmup_s=5.0)
    out = run(cfg, "least-busy")
    tenants = {r.tenant for r in out.requests}
    assert tenants == {"main", "flood"}
    assert len({(r.session, r.turn) for r in out.requests}) == len(out.requests)


def test_targets_compare_the_new_default_with_round_robin_and_least_busy() -> None:
    from bench.sim.report import check_targets

    def row(fam: str, strategy: str, p50: float, p99: float) -> dict[str, object]:
        return {"family": fam, "strategy": strategy, "ttft_p50_ms": p50, "ttft_p99_ms": p99}

    rows = [row("rag", "round-robin", 400, 900), row("rag", "least-busy", 420, 800),
            row("rag", "prefix-load", 30, 100),
            row("chat", "round-robin", 50, 200), row("chat", "least-busy", 55, 190),
            row("chat", "prefix-load", 53, 199)]
    got = check_targets(rows)  # type: ignore[arg-type]
    assert [line.split()[0] for line in got] == ["PASS", "PASS", "FAIL"]
    assert got[2].startswith("FAIL chat:")  # p50 53 > 1.05 × 50, p99 199 <= 1.05 × 190
