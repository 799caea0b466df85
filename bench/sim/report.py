"""`python -m bench.sim.report`: every workload family × strategy on the held-out seeds (or
the tuning seeds), the table of docs/routing.md, and the issue's targets checked against it.

Requests of all seeds of a family are pooled before percentiles are taken. Writes
bench/results/routing-families.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sim.__main__ import STRATEGIES, _pct
from bench.sim.cluster import run
from bench.sim.families import FAMILIES, HELDOUT_SEEDS, TUNE_SEEDS

REPORTED = ("round-robin", "least-busy", "prefix-affinity", "prefix-load")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "routing-families.json"
NEW = "prefix-load"


@dataclass(slots=True)
class Pooled:
    ttft: list[float] = field(default_factory=list)
    ttft_main: list[float] = field(default_factory=list)  # the non-flooding tenant's
    prompt: int = 0
    hit: int = 0
    requests: int = 0
    window_s: float = 0.0


def _one(job: tuple[str, str, int]) -> tuple[str, str, dict[str, Any]]:
    family, label, seed = job
    out = run(FAMILIES[family].build(seed), STRATEGIES[label])
    reqs = out.requests
    return family, label, {
        "ttft": [r.first_token - r.arrival for r in reqs],
        "ttft_main": [r.first_token - r.arrival for r in reqs if r.tenant == "main"],
        "prompt": sum(r.prompt_tokens for r in reqs),
        "hit": sum(r.hit_tokens for r in reqs),
        "requests": len(reqs),
        "window_s": out.window_s,
    }


def _row(family: str, label: str, p: Pooled) -> dict[str, Any]:
    ttft = sorted(p.ttft)
    main = sorted(p.ttft_main)
    return {
        "family": family, "strategy": label, "requests": p.requests,
        "ttft_p50_ms": 1000 * _pct(ttft, 50), "ttft_p99_ms": 1000 * _pct(ttft, 99),
        "main_ttft_p99_ms": 1000 * _pct(main, 99),
        "throughput_rps": p.requests / p.window_s if p.window_s else 0.0,
        "prefix_cache_hit_rate": p.hit / p.prompt if p.prompt else 0.0,
    }


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for `prefix-load`, one line each, prefixed PASS or FAIL."""
    by = {(r["family"], r["strategy"]): r for r in rows}
    lines = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        new, rr, lb = by.get((fam, NEW)), by.get((fam, "round-robin")), by.get((fam, "least-busy"))
        if new is None or rr is None or lb is None:
            continue
        ok50 = new["ttft_p50_ms"] <= 1.05 * rr["ttft_p50_ms"]
        ok99 = new["ttft_p99_ms"] <= 1.05 * lb["ttft_p99_ms"]
        lines.append(f"{'PASS' if ok50 and ok99 else 'FAIL'} {fam}: p50 {new['ttft_p50_ms']:.0f} "
                     f"vs round-robin {rr['ttft_p50_ms']:.0f} ms (<= +5 %), p99 "
                     f"{new['ttft_p99_ms']:.0f} vs least-busy {lb['ttft_p99_ms']:.0f} ms (<= +5 %)")
        if fam == "rag":
            r50 = rr["ttft_p50_ms"] / new["ttft_p50_ms"]
            r99 = lb["ttft_p99_ms"] / new["ttft_p99_ms"]
            lines.append(f"{'PASS' if r50 >= 3 and r99 >= 2 else 'FAIL'} rag gain: p50 {r50:.1f}x "
                         f"lower than round-robin (>= 3x), p99 {r99:.1f}x lower than least-busy "
                         "(>= 2x)")
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | strategy | TTFT p50 | TTFT p99 | req/s | prefix-cache hit |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        extra = (f" (main tenant p99 {r['main_ttft_p99_ms']:.0f} ms)"
                 if r["family"] == "flood" else "")
        lines.append(f"| {r['family']} | {r['strategy']} | {r['ttft_p50_ms']:.0f} ms | "
                     f"{r['ttft_p99_ms']:.0f} ms{extra} | {r['throughput_rps']:.1f} | "
                     f"{100 * r['prefix_cache_hit_rate']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim.report", description=__doc__)
    ap.add_argument("--seeds", choices=("heldout", "tune"), default="heldout")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--strategies", default=",".join(REPORTED))
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    seeds = HELDOUT_SEEDS if args.seeds == "heldout" else TUNE_SEEDS
    families = [f for f in args.families.split(",") if f]
    labels = [s for s in args.strategies.split(",") if s]
    for f in families:
        if f not in FAMILIES:
            ap.error(f"unknown family {f!r}; use: {', '.join(FAMILIES)}")
    for s in labels:
        if s not in STRATEGIES:
            ap.error(f"unknown strategy {s!r}; use: {', '.join(STRATEGIES)}")
    jobs = [(f, s, seed) for f in families for s in labels for seed in seeds]
    pooled = {(f, s): Pooled() for f in families for s in labels}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for fam, label, res in ex.map(_one, jobs):
            p = pooled[(fam, label)]
            p.ttft += res["ttft"]
            p.ttft_main += res["ttft_main"]
            p.prompt += res["prompt"]
            p.hit += res["hit"]
            p.requests += res["requests"]
            p.window_s += res["window_s"]
            print(f"  {fam} {label}: done ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr)
    rows = [_row(f, s, pooled[(f, s)]) for f in families for s in labels]
    checks = check_targets(rows)
    print(f"seeds ({args.seeds}): {', '.join(map(str, seeds))}")
    print(table(rows))
    print("\n".join(checks))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python -m bench.sim.report " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "seeds": list(seeds), "seed_set": args.seeds,
        "families": {f: FAMILIES[f].summary for f in families},
        "results": rows, "targets": checks,
        "wall_s": time.perf_counter() - started,
    }, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
