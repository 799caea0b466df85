"""Several gateway replicas in the simulator, each with its own strategy instance and its own
`SignalCollector` (own in-flight counts, own prefix index), behind a load balancer that
spreads requests over them in turn — and, with `share_s`, the shared view of
`gateway.routing.shared_view` between them: every `share_s` seconds each replica publishes
its in-flight counts and takes the others', and every `prefix_share_s` the prompts it routed,
through the same functions the Redis exchange uses (`batch`, `encode_loads`, `remote_loads`).
What one replica learns is thus up to `share_s` (loads) and `prefix_share_s` (prefixes) old
on the others, as the view is in production (both `INTERVAL_S` there).

`python -m bench.sim.replicas`: the RAG family (and optionally others) on the held-out seeds,
one replica against four with their own views and four sharing theirs at a few staleness
bounds; the table of docs/routing.md, "Shared view across replicas".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import Strategy
from gateway.routing.registry import make_strategy
from gateway.routing.shared_view import batch, encode_loads, remote_loads
from gateway.routing.signals import EngineMetrics, SignalCollector

RESULTS = Path(__file__).resolve().parents[1] / "results" / "routing-replicas.json"


class Gateways:
    """N replicas of the gateway's routing, as the simulator's event loop drives them."""

    def __init__(self, replicas: int, share_s: float | None, strategy_name: str, seed: int,
                 strategy: Strategy | None, clock: Callable[[], float],
                 scrape_interval_s: float, prefix_share_s: float | None = None) -> None:
        if strategy is not None and replicas > 1:
            raise ValueError("a tuned strategy instance runs as one replica")
        self.strategies: list[Strategy] = [
            strategy if strategy is not None and k == 0 else make_strategy(strategy_name,
                                                                           seed + 7919 * k)
            for k in range(replicas)]
        self.collectors = [SignalCollector(interval_s=scrape_interval_s,
                                           stale_s=3 * scrape_interval_s, clock=clock)
                           for _ in range(replicas)]
        self._share_s = share_s if replicas > 1 else None
        if self._share_s is not None:
            for c in self.collectors:
                c.prefixes.outbox = []
        self._prefix_share_s = prefix_share_s if prefix_share_s is not None else share_s
        self._clock = clock
        self._next_share = 0.0
        self._next_prefixes = 0.0
        self._turn = 0
        self._of: dict[tuple[int, int], int] = {}  # (session, turn) -> replica that sent it

    def route(self, targets: Sequence[Target], call: Call, key: tuple[int, int]) -> Target:
        """The replica the load balancer hands this request to picks its backend."""
        now = self._clock()
        if self._share_s is not None and now >= self._next_share:
            prefixes = now >= self._next_prefixes
            self.share(prefixes)
            self._next_share = now + self._share_s
            if prefixes:
                self._next_prefixes = now + (self._prefix_share_s or self._share_s)
        k = self._turn % len(self.collectors)
        self._turn += 1
        collector = self.collectors[k]
        chosen = self.strategies[k].order(targets, collector.snapshot(), call)[0]
        collector.begin(chosen.id)
        self._of[key] = k
        return chosen

    def end(self, key: tuple[int, int], deployment_id: str, latency_s: float,
            ttft_s: float) -> None:
        self.collectors[self._of.pop(key)].end(deployment_id, ok=True, latency_s=latency_s,
                                                ttft_s=ttft_s)

    def observe(self, deployment_id: str, metrics: EngineMetrics) -> None:
        for c in self.collectors:  # every replica scrapes every backend
            c.observe(deployment_id, metrics)

    def share(self, prefixes: bool = True) -> None:
        """One exchange of every replica at once, as through Redis; the prefix records too
        with `prefixes` (else they wait in the outboxes)."""
        names = [f"r{k}" for k in range(len(self.collectors))]
        loads = {n: encode_loads(c.local_in_flight()) for n, c in zip(names, self.collectors,
                                                                      strict=True)}
        records = []
        for c in self.collectors:
            if prefixes:
                records.append(batch(c.prefixes.outbox or []))
                c.prefixes.outbox = []
        for k, c in enumerate(self.collectors):
            c.set_remote(remote_loads(names[k], loads), len(names) - 1)
            for j, recs in enumerate(records):
                if j != k:
                    for did, fps, tokens in recs:
                        c.prefixes.record(did, fps, tokens, publish=False)


# ---- the table ---------------------------------------------------------------------------

SETUPS: dict[str, tuple[int, float | None, float | None]] = {
    "1 replica": (1, None, None),
    "4 own views": (4, None, None),
    "4 shared every 0.25 s": (4, 0.25, 0.25),  # production's `INTERVAL_S`
    # Loads five times as often, prefixes as in production: measured, not kept
    # (docs/routing.md, "Shared view across replicas").
    "4 loads every 0.05 s": (4, 0.05, 0.25),
    "4 shared every 1 s": (4, 1.0, 1.0),
    "4 shared every 5 s": (4, 5.0, 5.0),
}
"""Row label (no commas: `--setups` is a comma list) -> (replicas, share_s, prefix_share_s):
loads every `share_s`, prefixes every `prefix_share_s`."""


def _one(job: tuple[str, str, str, int]) -> tuple[str, str, str, dict[str, Any]]:
    from bench.sim.cluster import run
    from bench.sim.families import FAMILIES

    family, setup, strategy, seed = job
    replicas, share_s, prefix_share_s = SETUPS[setup]
    cfg = dataclasses.replace(FAMILIES[family].build(seed), replicas=replicas, share_s=share_s,
                              prefix_share_s=prefix_share_s)
    out = run(cfg, strategy)
    reqs = out.requests
    return family, setup, strategy, {
        "ttft": [r.first_token - r.arrival for r in reqs],
        "prompt": sum(r.prompt_tokens for r in reqs),
        "hit": sum(r.hit_tokens for r in reqs),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.sim.__main__ import _pct
    from bench.sim.families import HELDOUT_SEEDS, TUNE_SEEDS

    ap = argparse.ArgumentParser(prog="python -m bench.sim.replicas", description=__doc__)
    ap.add_argument("--families", default="rag")
    ap.add_argument("--strategies", default="prefix-load,least-busy")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--tune", action="store_true", help="the tuning seeds, not the held-out")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    seeds = TUNE_SEEDS if args.tune else HELDOUT_SEEDS
    jobs = [(f, s, st, seed) for f in args.families.split(",") for s in args.setups.split(",")
            for st in args.strategies.split(",") for seed in seeds]
    started = time.monotonic()
    pooled: dict[tuple[str, str, str], dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for family, setup, strategy, got in pool.map(_one, jobs):
            p = pooled.setdefault((family, setup, strategy), {"ttft": [], "prompt": 0, "hit": 0})
            p["ttft"] += got["ttft"]
            p["prompt"] += got["prompt"]
            p["hit"] += got["hit"]
    rows = []
    print(f"seeds {seeds}; {time.monotonic() - started:.0f} s", file=sys.stderr)
    print("| family | strategy | gateways | TTFT p50 ms | TTFT p99 ms | hit rate |\n"
          "|---|---|---|---:|---:|---:|")
    for (family, setup, strategy), p in pooled.items():
        ttft = sorted(p["ttft"])
        row = {"family": family, "setup": setup, "strategy": strategy,
               "requests": len(ttft), "ttft_p50_ms": 1000 * _pct(ttft, 50),
               "ttft_p99_ms": 1000 * _pct(ttft, 99),
               "prefix_cache_hit_rate": p["hit"] / p["prompt"] if p["prompt"] else 0.0}
        rows.append(row)
        print(f"| {family} | {strategy} | {setup} | {row['ttft_p50_ms']:.0f} | "
              f"{row['ttft_p99_ms']:.0f} | {100 * row['prefix_cache_hit_rate']:.1f} % |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seeds": list(seeds), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
