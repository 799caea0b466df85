"""Median and spread over every round of one or more saved runs (`bench/results/*.json`).

    .venv/bin/python -m bench.overhead.spread bench/results/overhead-A.json [B.json …]

The run's own report shows each scenario's best round; this is the figure to compare across
machines and reruns: per row and scenario, the median of all rounds of all the files given,
with the lowest and highest, and the median's ratio to a reference row (the bare pass-through
of the same API, or `--against ROW`).

It also gives the ratio **paired by round**: rounds run round-robin over the targets, so round
k of a row and round k of its reference ran seconds apart, and their ratio cancels what the
host did in between (this machine's floor moved 2× between runs minutes apart while the ratios
held). The median of those per-round ratios, with their lowest and highest, is the figure
issue 9 asks to reproduce within ±10 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# scenario key -> (column, value of one round)
Getter = Callable[[dict[str, Any]], float | None]


def _lat(key: str, pct: str, scale: float) -> Getter:
    return lambda r: r[key][pct] / scale if key in r else None


# (scenario key, column) -> value of one round. Every round also records the CPU that
# processes the benchmark did not start used meanwhile (percent of one core).
METRICS: dict[tuple[str, str], Getter] = {
    ("b_throughput", "req/s, c=64"): lambda r: r.get("rps"),
    ("b_throughput", "CPU µs/req, c=64"): lambda r: r.get("proxy_cpu_us_per_request"),
    ("a_latency", "p50 ms, c=1"): _lat("latency_us", "p50", 1000),
    ("a_latency", "p99 ms, c=1"): _lat("latency_us", "p99", 1000),
    ("c_stream", "TTFT p50 ms, c=16"): _lat("ttft_ms", "p50", 1),
    ("c_stream", "CPU µs/stream, c=16"): lambda r: r.get("proxy_cpu_us_per_request"),
}
OTHERS = "others' CPU %"


def rounds(files: Sequence[Path]) -> dict[tuple[str, str], list[float]]:
    """(row, column) -> every round's value, across the files; (row, OTHERS) gathers the
    background CPU of all of the row's rounds."""
    out: dict[tuple[str, str], list[float]] = {}
    for f in files:
        for row, res in json.loads(f.read_text())["results"].items():
            for scenario, runs in (res.get("runs") or {}).items():
                for (key, column), value in METRICS.items():
                    if key != scenario:
                        continue
                    vals = [v for v in (value(r) for r in runs) if v is not None]
                    if vals:
                        out.setdefault((row, column), []).extend(vals)
                bg = [r["background_cpu_pct"] for r in runs if "background_cpu_pct" in r]
                if bg:
                    out.setdefault((row, OTHERS), []).extend(bg)
    return out


def _ref_row(row: str, against: str | None) -> str:
    return against or ("bare-aiohttp/responses" if "/responses" in row else "bare-aiohttp")


def paired(files: Sequence[Path], against: str | None = None) -> dict[tuple[str, str], list[float]]:
    """(row, column) -> each round's value over its reference row's value in the same round of
    the same file (rounds a row or its reference lacks are skipped)."""
    out: dict[tuple[str, str], list[float]] = {}
    for f in files:
        results = json.loads(f.read_text())["results"]
        for row, res in results.items():
            ref = results.get(_ref_row(row, against))
            if ref is None or ref is res:
                continue
            for scenario, runs in (res.get("runs") or {}).items():
                ref_runs = (ref.get("runs") or {}).get(scenario) or []
                for (key, column), value in METRICS.items():
                    if key != scenario:
                        continue
                    for mine, theirs in zip(runs, ref_runs, strict=False):
                        a, b = value(mine), value(theirs)
                        if a is not None and b:
                            out.setdefault((row, column), []).append(a / b)
    return out


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.3f}"


def table(data: dict[tuple[str, str], list[float]], against: str | None = None,
          pairs: dict[tuple[str, str], list[float]] | None = None) -> str:
    lines = ["| row | measure | rounds | median | min – max | spread | vs reference "
             "| paired by round: median (min – max) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {column: i for i, (_, column) in enumerate(METRICS)} | {OTHERS: len(METRICS)}
    for (row, scenario), vals in sorted(data.items(), key=lambda kv: (kv[0][0],
                                                                      order.get(kv[0][1], 99))):
        med = statistics.median(vals)
        ref_row = _ref_row(row, against)
        ref = data.get((ref_row, scenario))
        ratio = f"{med / statistics.median(ref):.2f}× {ref_row}" \
            if ref and ref_row != row and scenario != OTHERS else "—"
        spread = (max(vals) - min(vals)) / med * 100 if med else 0.0
        each = (pairs or {}).get((row, scenario))
        by_round = (f"{statistics.median(each):.2f}× ({min(each):.2f}–{max(each):.2f})"
                    if each else "—")
        lines.append(f"| {row} | {scenario} | {len(vals)} | {_num(med)} | "
                     f"{_num(min(vals))} – {_num(max(vals))} | ±{spread / 2:.0f} % | {ratio} "
                     f"| {by_round} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead.spread", description=__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--against", help="reference row for the ratio (default: bare of the API)")
    args = p.parse_args(argv)
    print(table(rounds(args.files), args.against, paired(args.files, args.against)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
