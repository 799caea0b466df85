"""What a run's raw numbers mean: overheads over direct, ratios to the bare aiohttp
pass-through and to LiteLLM, Responses rows against the same target's chat row, and the
issues' targets with a verdict each. Every row is compared with the rows of its own API
(a Responses row with `direct/responses` and `bare-aiohttp/responses`)."""

from __future__ import annotations

from typing import Any


def _api(r: dict[str, Any]) -> str:
    return str(r.get("api", "chat"))  # results from before the Responses rows: all chat


def _peer(results: dict[str, dict[str, Any]], target: str, api: str) -> str | None:
    """The key of `target`'s first row for `api` (the chat row is the target's name)."""
    for key, r in results.items():
        if r.get("target", key) == target and _api(r) == api:
            return key
    return None


def cpu_per_request(r: dict[str, Any], key: str = "b_throughput") -> float | None:
    """Median over a scenario's runs of the proxy's CPU µs per request."""
    vals = sorted(x["proxy_cpu_us_per_request"] for x in r.get("runs", {}).get(key, [])
                  if x.get("proxy_cpu_us_per_request"))
    return vals[len(vals) // 2] if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def derive(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overheads over direct, ratios to the bare aiohttp pass-through, and the targets."""
    d: dict[str, Any] = {}
    for name, r in results.items():
        row: dict[str, Any] = {}
        dk = _peer(results, "direct", _api(r))
        direct = results[dk] if dk else None
        if direct and "a_latency" in r and "a_latency" in direct:
            a, da = r["a_latency"]["latency_us"], direct["a_latency"]["latency_us"]
            row["added_p50_us"] = a["p50"] - da["p50"]
            row["added_p99_us"] = a["p99"] - da["p99"]
        if direct and "c_stream" in r and "c_stream" in direct:
            c, dc = r["c_stream"], direct["c_stream"]
            row["ttft_overhead_p50_ms"] = c["ttft_ms"]["p50"] - dc["ttft_ms"]["p50"]
            row["ttft_overhead_p99_ms"] = c["ttft_ms"]["p99"] - dc["ttft_ms"]["p99"]
            row["total_overhead_p50_ms"] = c["total_ms"]["p50"] - dc["total_ms"]["p50"]
        cpu = cpu_per_request(r)
        if cpu:
            row["cpu_us_per_request"] = cpu
            row["rps_per_core_from_cpu"] = 1e6 / cpu
        row["cpu_us_per_stream"] = cpu_per_request(r, "c_stream")
        d[name] = row
    lite = results.get("litellm")
    for name, row in d.items():
        r = results[name]
        cpu = row.get("cpu_us_per_request")
        bk = _peer(results, "bare-aiohttp", _api(r))
        if bk is not None and bk != name:
            bare = results[bk]
            if "b_throughput" in r and "b_throughput" in bare:
                row["rps_vs_bare"] = r["b_throughput"]["rps"] / bare["b_throughput"]["rps"]
            bare_cpu = d[bk].get("cpu_us_per_request")
            if cpu and bare_cpu:
                row["cpu_rps_vs_bare"] = bare_cpu / cpu
                # What the proxy itself adds per request, the floor's work taken away.
                row["own_cpu_us_per_request"] = cpu - bare_cpu
            b = d[bk]
            if b.get("added_p50_us", 0) > 0 and "added_p50_us" in row:
                row["added_p50_vs_bare"] = row["added_p50_us"] / b["added_p50_us"]
            if b.get("ttft_overhead_p50_ms", 0) > 0 and "ttft_overhead_p50_ms" in row:
                row["ttft_overhead_vs_bare"] = (row["ttft_overhead_p50_ms"]
                                                / b["ttft_overhead_p50_ms"])
        if lite and _api(r) == "chat" and "b_throughput" in r and "b_throughput" in lite \
                and lite["b_throughput"]["rps"]:
            row["rps_vs_litellm"] = r["b_throughput"]["rps"] / lite["b_throughput"]["rps"]
            lite_cpu = cpu_per_request(lite)
            if cpu and lite_cpu:
                row["cpu_rps_vs_litellm"] = lite_cpu / cpu
    for name, row in d.items():
        r = results[name]
        chat_key = _peer(results, r.get("target", name), "chat")
        if _api(r) == "chat" or chat_key is None:
            continue
        # A Responses row against the same target's chat row, measured in the same rounds.
        chat = d[chat_key]
        row["cpu_vs_chat"] = _ratio(row.get("cpu_us_per_request"),
                                    chat.get("cpu_us_per_request"))
        row["cpu_stream_vs_chat"] = _ratio(row.get("cpu_us_per_stream"),
                                           chat.get("cpu_us_per_stream"))
        row["own_cpu_vs_chat"] = _ratio(row.get("own_cpu_us_per_request"),
                                        chat.get("own_cpu_us_per_request"))
        row["added_p50_vs_chat"] = _ratio(row.get("added_p50_us"), chat.get("added_p50_us"))
    return d


def check_targets(results: dict[str, Any], derived: dict[str, Any],
                  name: str = "gateway") -> list[dict[str, Any]]:
    """The issues' targets for one gateway variant: each with its measured value and verdict."""
    r, d = results.get(name), derived.get(name, {})
    if r is None:
        return []
    checks = []

    def add(what: str, value: float | None, limit: str, ok: bool | None) -> None:
        checks.append({"target": what, "value": None if value is None else round(value, 2),
                       "limit": limit, "met": ok})

    v = d.get("added_p50_vs_bare")
    add("added p50 latency at c=1 vs bare", v, "≤ 1.5×", None if v is None else v <= 1.5)
    v = d.get("rps_vs_bare")
    add("throughput at c=64 vs bare (req/s measured)", v, "≥ 0.6×",
        None if v is None else v >= 0.6)
    v = d.get("cpu_rps_vs_bare")
    add("throughput at c=64 vs bare (from CPU µs/request)", v, "≥ 0.6×",
        None if v is None else v >= 0.6)
    v = d.get("rps_vs_litellm")
    add("throughput at c=64 vs LiteLLM (req/s measured)", v, "≥ 20×",
        None if v is None else v >= 20)
    v = d.get("cpu_rps_vs_litellm")
    add("throughput at c=64 vs LiteLLM (from CPU µs/request)", v, "≥ 20×",
        None if v is None else v >= 20)
    v = d.get("ttft_overhead_vs_bare")
    add("streaming TTFT overhead vs bare", v, "≤ 1.5×", None if v is None else v <= 1.5)
    v = r.get("rss_mb")
    add("RSS after the run (MB)", v, "< 150", None if v is None else v < 150)
    s = r.get("soak")
    if s:
        v = s["growth_after_first_slice_mb"]
        add(f"RSS growth over {s['requests']:,} requests (MB)", v, "flat (< 10)", v < 10)
        if "growth_from_mb" in s:  # issue 9, target 6
            v = s["growth_from_mb"]
            add(f"RSS growth from {s['from_requests']:,} to {s['requests']:,} requests (MB)",
                v, "< 2", v < 2)
    native = derived.get(f"{name}/responses-native")
    if native:
        # Issue 10: a native Responses pass-through costs no more than chat's pass-through.
        for what, key in (("CPU µs/request at c=64", "cpu_vs_chat"),
                          ("CPU µs/stream at c=16", "cpu_stream_vs_chat")):
            v = native.get(key)
            add(f"Responses native vs chat: {what}", v, "≤ 1.0×",
                None if v is None else v <= 1.0)
    for variant, label in (("responses-stored", "Responses native, stored"),
                           ("responses-translated", "Responses translated")):
        other = derived.get(f"{name}/{variant}")
        if other:  # reported beside it, no bound
            add(f"{label} vs chat: CPU µs/request at c=64", other.get("cpu_vs_chat"), "—",
                None)
    return checks
