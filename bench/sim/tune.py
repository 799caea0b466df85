"""`python -m bench.sim.tune`: `prefix-load` with other constants, on the **tuning seeds only**
(`bench.sim.families.TUNE_SEEDS`): how its constants were chosen. The held-out seeds are
reserved for `python -m bench.sim.report`.

    python -m bench.sim.tune --grid queue_tokens=256,512,1024 --families chat-long,rag
"""

from __future__ import annotations

import argparse
import itertools
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.sim.__main__ import _pct
from bench.sim.cluster import run
from bench.sim.families import FAMILIES, TUNE_SEEDS
from gateway.routing.strategies.prefix_load import PrefixLoad


def _one(job: tuple[str, int, tuple[tuple[str, float], ...]]) -> tuple[Any, ...]:
    family, seed, params = job
    cfg = FAMILIES[family].build(seed)
    out = run(cfg, "prefix-load", PrefixLoad(seed, **dict(params)))  # type: ignore[arg-type]
    ttft = [r.first_token - r.arrival for r in out.requests]
    return family, params, ttft


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim.tune", description=__doc__)
    ap.add_argument("--grid", action="append", default=[],
                    help="name=v1,v2,… (a PrefixLoad keyword); repeat for a product")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    axes = []
    for g in args.grid:
        name, _, values = g.partition("=")
        axes.append([(name, float(v)) for v in values.split(",")])
    settings = [tuple(c) for c in itertools.product(*axes)] or [()]
    families = [f for f in args.families.split(",") if f]
    jobs = [(f, seed, s) for f in families for s in settings for seed in TUNE_SEEDS]
    pooled: dict[tuple[str, Any], list[float]] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for fam, params, ttft in ex.map(_one, jobs):
            pooled.setdefault((fam, params), []).extend(ttft)
    print(f"tuning seeds {TUNE_SEEDS}", file=sys.stderr)
    for (fam, params), ttft in pooled.items():
        ttft.sort()
        label = " ".join(f"{k}={v:g}" for k, v in params) or "defaults"
        print(f"{fam:<12} {label:<40} p50 {1000 * _pct(ttft, 50):6.1f} ms  "
              f"p99 {1000 * _pct(ttft, 99):6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
