"""Markdown tables from a results JSON (what docs/benchmarks.md shows).

    python -m bench.overhead.report bench/results/overhead-latest.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _changes(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The soak's samples where RSS moved, and the last one."""
    out = [p for i, p in enumerate(samples) if i == 0 or p["rss_mb"] != samples[i - 1]["rss_mb"]]
    return out if out[-1] is samples[-1] else [*out, samples[-1]]


def _f(v: Any, nd: int = 0, suffix: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and v != v:  # NaN
        return "—"
    return f"{v:,.{nd}f}{suffix}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(doc: dict[str, Any]) -> str:
    res: dict[str, Any] = doc["results"]
    der: dict[str, Any] = doc["derived"]
    plan = doc["plan"]
    out = []

    rows = []
    for name, r in res.items():
        if "a_latency" not in r:
            continue
        lat, d = r["a_latency"]["latency_us"], der.get(name, {})
        rows.append([r["label"], _f(lat["p50"] / 1000, 3), _f(lat["p99"] / 1000, 3),
                     _f(d.get("added_p50_us"), 0), _f(d.get("added_p99_us"), 0),
                     _f(d.get("added_p50_vs_bare"), 2, "×"),
                     _f(r["a_latency"]["rps"], 0), str(r["a_latency"]["error_count"]),
                     _f(r["a_latency"].get("background_cpu_pct"), 0)])
    out.append(f"### (a) Non-streaming, concurrency {plan['c_latency']}: added latency\n")
    out.append(_table(["target", "p50 ms", "p99 ms", "added p50 µs", "added p99 µs",
                       "added p50 vs bare", "req/s", "errors", "bg CPU %"], rows))

    rows = []
    for name, r in res.items():
        if "b_throughput" not in r:
            continue
        b, d = r["b_throughput"], der.get(name, {})
        rows.append([r["label"], _f(b["rps"], 0), _f(d.get("rps_vs_bare"), 2, "×"),
                     _f(d.get("rps_vs_litellm"), 1, "×"), _f(d.get("cpu_us_per_request"), 0),
                     _f(d.get("rps_per_core_from_cpu"), 0),
                     _f(d.get("cpu_rps_vs_bare"), 2, "×"),
                     _f(b["latency_us"]["p50"] / 1000, 2), _f(b["latency_us"]["p99"] / 1000, 2),
                     str(b["error_count"]), _f(b.get("background_cpu_pct"), 0)])
    out.append(f"\n### (b) Non-streaming, concurrency {plan['c_throughput']}: "
               "requests per second on one core\n")
    out.append(_table(["target", "req/s", "vs bare", "vs LiteLLM", "proxy CPU µs/req",
                       "req/s per core (CPU)", "vs bare (CPU)", "p50 ms", "p99 ms",
                       "errors", "bg CPU %"], rows))

    rows = []
    for name, r in res.items():
        if "c_stream" not in r:
            continue
        c, d = r["c_stream"], der.get(name, {})
        rows.append([r["label"], _f(c["ttft_ms"]["p50"], 2), _f(c["ttft_ms"]["p99"], 2),
                     _f(d.get("ttft_overhead_p50_ms"), 2),
                     _f(d.get("ttft_overhead_vs_bare"), 2, "×"),
                     _f(c["total_ms"]["p50"], 1), _f(c["total_ms"]["p99"], 1),
                     _f(d.get("total_overhead_p50_ms"), 1), _f(c["streams_per_s"], 0),
                     _f(d.get("cpu_us_per_stream"), 0),
                     str(c["errors"]), _f(c.get("background_cpu_pct"), 0)])
    out.append(f"\n### (c) Streaming, concurrency {plan['c_stream']} ({plan['chunks']} events, "
               f"{plan['chunk_delay_ms']:g} ms apart): time to first token and total\n")
    out.append(_table(["target", "TTFT p50 ms", "TTFT p99 ms", "TTFT overhead p50 ms",
                       "overhead vs bare", "total p50 ms", "total p99 ms",
                       "total overhead p50 ms", "streams/s", "proxy CPU µs/stream", "errors",
                       "bg CPU %"], rows))

    rows = []
    for r in res.values():
        if r.get("rss_mb") is None:
            continue
        rows.append([r["label"], _f(r.get("rss_idle_mb"), 1), _f(r["rss_mb"], 1),
                     _f(r.get("cpu_s"), 1),
                     _f(r.get("startup_s"), 1)])
    out.append("\n### Resident memory\n")
    out.append(_table(["proxy", "RSS idle MB", "RSS after the run MB",
                       "CPU s (whole run)", "start-up s"], rows))

    for r in res.values():
        s = r.get("soak")
        if not s:
            continue
        pts = ", ".join(f"{p['requests'] // 1000}k: {p['rss_mb']:.1f}"
                        for p in _changes(s["samples"]))
        out.append(f"\nRSS of **{r['label']}** over {s['requests']:,} requests "
                   f"(c={plan['c_throughput']}, {s['errors']} errors), wherever it changed: "
                   f"{pts} MB — "
                   f"{s['growth_after_first_slice_mb']:+.1f} MB after the first slice"
                   + (f", {s['growth_from_mb']:+.1f} MB from {s['from_requests']:,} requests "
                      f"({s['rss_from_mb']:.1f} MB) to the end." if "growth_from_mb" in s
                      else "."))

    rows = _responses_rows(res, der)
    if rows:
        out.append(f"\n### Responses API beside chat (c=1, c={plan['c_throughput']}, "
                   f"c={plan['c_stream']} streaming; same rounds)\n")
        out.append(_table(["row", "CPU µs/req", "vs chat", "own CPU µs/req (− bare)",
                           "req/s", "p50 ms (c=1)", "p99 ms (c=1)", "TTFT p50 ms",
                           "TTFT p99 ms", "CPU µs/stream", "vs chat"], rows))

    for name, checks in doc.get("targets", {}).items():
        if not checks:
            continue
        out.append(f"\n### Targets: {res[name]['label']}\n")
        out.append(_table(["target", "measured", "required", "met"], [
            [c["target"], _f(c["value"], 2), c["limit"],
             "—" if c["met"] is None else ("yes" if c["met"] else "**no**")] for c in checks]))
    return "\n".join(out) + "\n"


def _responses_rows(res: dict[str, Any], der: dict[str, Any]) -> list[list[str]]:
    """Each target measured through the Responses API: its chat row, then its Responses rows."""
    with_responses = {r.get("target") for r in res.values() if r.get("api") == "responses"}
    rows = []
    for target in [n for n, r in res.items() if n in with_responses
                   and r.get("api", "chat") == "chat"]:
        for name, r in res.items():
            if r.get("target", name) != target:
                continue
            d = der.get(name, {})
            a = r.get("a_latency", {}).get("latency_us", {})
            b, c = r.get("b_throughput", {}), r.get("c_stream", {}).get("ttft_ms", {})
            label = r["label"] + (" · chat" if r.get("api", "chat") == "chat" else "")
            rows.append([label, _f(d.get("cpu_us_per_request"), 0),
                         _f(d.get("cpu_vs_chat"), 2, "×"),
                         _f(d.get("own_cpu_us_per_request"), 0), _f(b.get("rps"), 0),
                         _f(a["p50"] / 1000 if a else None, 3),
                         _f(a["p99"] / 1000 if a else None, 3),
                         _f(c.get("p50"), 2), _f(c.get("p99"), 2),
                         _f(d.get("cpu_us_per_stream"), 0),
                         _f(d.get("cpu_stream_vs_chat"), 2, "×")])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0] if args else "bench/results/overhead-latest.json")
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
