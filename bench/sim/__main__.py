"""`python -m bench.sim`: every routing strategy on one seeded workload; a table on stdout and
JSON in bench/results/routing-sim.json."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.sim.cluster import Outcome, SimConfig, capacity_rps, run

# Row label -> policy strategy name. Round-robin is `weighted` with equal weights.
STRATEGIES = {
    "round-robin": "weighted",
    "least-busy": "least-busy",
    "prefix-affinity": "prefix-affinity",
    "prefix-load": "prefix-load",
    "latency": "latency",
    "cost": "cost",
}
RESULTS = Path(__file__).resolve().parents[1] / "results" / "routing-sim.json"


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def summarize(label: str, out: Outcome) -> dict[str, Any]:
    reqs = out.requests
    ttft = sorted(r.first_token - r.arrival for r in reqs)
    e2e = sorted(r.finish - r.arrival for r in reqs)
    prompt = sum(r.prompt_tokens for r in reqs)
    hit = sum(r.hit_tokens for r in reqs)
    per_backend = [0] * len(out.backends)
    for r in reqs:
        per_backend[r.backend] += 1
    mean_share = len(reqs) / len(per_backend) if per_backend else 0.0
    return {
        "strategy": label,
        "policy_strategy": STRATEGIES.get(label, label),
        "requests": len(reqs),
        "ttft_p50_ms": 1000 * _pct(ttft, 50),
        "ttft_p90_ms": 1000 * _pct(ttft, 90),
        "ttft_p99_ms": 1000 * _pct(ttft, 99),
        "ttft_mean_ms": 1000 * sum(ttft) / len(ttft) if ttft else float("nan"),
        "latency_p50_s": _pct(e2e, 50),
        "latency_p99_s": _pct(e2e, 99),
        "throughput_rps": len(reqs) / out.window_s,
        "output_tokens_per_s": sum(r.output_tokens for r in reqs) / out.window_s,
        "prefix_cache_hit_rate": hit / prompt if prompt else 0.0,
        "busiest_backend_share_vs_mean": max(per_backend) / mean_share if mean_share else 0.0,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'strategy':<16} {'requests':>8} {'TTFT p50':>10} {'TTFT p99':>10} "
            f"{'lat p50':>8} {'lat p99':>8} {'req/s':>7} {'out tok/s':>10} {'cache hit':>9} "
            f"{'max/mean':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['strategy']:<16} {r['requests']:>8} {r['ttft_p50_ms']:>8.0f}ms "
            f"{r['ttft_p99_ms']:>8.0f}ms {r['latency_p50_s']:>7.2f}s {r['latency_p99_s']:>7.2f}s "
            f"{r['throughput_rps']:>7.2f} {r['output_tokens_per_s']:>10.0f} "
            f"{100 * r['prefix_cache_hit_rate']:>8.1f}% {r['busiest_backend_share_vs_mean']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    d = SimConfig()
    ap.add_argument("--load", type=float, default=d.load, help="fraction of capacity (0.7)")
    ap.add_argument("--backends", type=int, default=d.backends)
    ap.add_argument("--duration", type=float, default=d.duration_s, help="simulated seconds")
    ap.add_argument("--warmup", type=float, default=d.warmup_s, help="unmeasured seconds")
    ap.add_argument("--scrape-interval", type=float, default=d.scrape_interval_s)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma-separated, of: {', '.join(STRATEGIES)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = ap.parse_args(argv)
    cfg = SimConfig(backends=args.backends, load=args.load, duration_s=args.duration,
                    warmup_s=args.warmup, scrape_interval_s=args.scrape_interval,
                    seed=args.seed)
    labels = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for label in labels:
        if label not in STRATEGIES:
            ap.error(f"unknown strategy {label!r}; use: {', '.join(STRATEGIES)}")
    cap, derivation = capacity_rps(cfg)
    print(f"{cfg.backends} backends, capacity {cap:.1f} req/s, offered {cfg.load:.0%} = "
          f"{cfg.load * cap:.1f} req/s, {cfg.duration_s:.0f} s simulated "
          f"({cfg.warmup_s:.0f} s warm-up), seed {cfg.seed}", file=sys.stderr)
    rows = []
    started = time.perf_counter()
    for label in labels:
        t0 = time.perf_counter()
        rows.append(summarize(label, run(cfg, STRATEGIES[label])))
        print(f"  {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(table(rows))
    result = {
        "command": "python -m bench.sim " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": dataclasses.asdict(cfg),
        "capacity_rps": cap,
        "offered_rps": cfg.load * cap,
        "capacity_derivation": derivation,
        "wall_s": time.perf_counter() - started,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
