"""One run: start the mocks, then for each target start it, warm it, measure the three
scenarios and its memory, stop it. Everything is bounded in time."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.overhead import mock_nginx, stream_client, wrk
from bench.overhead.procs import (
    LOAD_CPU,
    Background,
    Proc,
    check_completion,
    check_stream,
    free_port,
    wait_answering,
)
from bench.overhead.targets import Endpoint, Env, Target, Upstreams


@dataclass(frozen=True)
class Plan:
    seconds: float = 10.0        # each measurement
    warmup: float = 3.0          # before each scenario, not counted
    c_latency: int = 1           # scenario (a)
    c_throughput: int = 64       # scenario (b)
    c_stream: int = 16           # scenario (c)
    chunks: int = 20             # SSE events per streamed reply
    chunk_delay_ms: float = 5.0  # before each event, the first one too
    repeat: int = 1              # rounds per scenario, round-robin over the targets
    soak_requests: int = 100_000
    soak_slice_s: float = 5.0
    soak_max_s: float = 180.0
    soak_targets: tuple[str, ...] = ("gateway", "gateway-auth")
    scenarios: tuple[str, ...] = ("a", "b", "c")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_mocks(env_procs: Any, plan: Plan, workdir: Path, nginx: str) -> Upstreams:
    nginx_port, sse_port = free_port(), free_port()
    ndir = workdir / "nginx"
    ndir.mkdir()
    conf = mock_nginx.write_conf(ndir, nginx_port)
    ng = env_procs.start("nginx", mock_nginx.argv(nginx, conf, ndir), cpu=LOAD_CPU)
    sse = env_procs.start(
        "mock-sse", [sys.executable, "-m", "bench.overhead.mock_sse", "--port", str(sse_port),
                     "--chunks", str(plan.chunks), "--delay-ms", str(plan.chunk_delay_ms)],
        cpu=LOAD_CPU, cwd=str(Path(__file__).resolve().parents[2]))
    body = wrk.BODY.encode()
    check_completion(wait_answering(ng, nginx_port, "/v1/chat/completions", body, {}, 10))
    check_stream(wait_answering(sse, sse_port, "/v1/chat/completions",
                                stream_client.body_for("bench-stream"), {}, 10))
    return Upstreams(f"http://127.0.0.1:{nginx_port}/v1", f"http://127.0.0.1:{sse_port}/v1")


def _ready(t: Target, ep: Endpoint, model: str, stream: bool) -> None:
    if ep.proc is None:
        return
    path = ep.url.split(str(ep.port), 1)[1]
    body = stream_client.body_for(model) if stream else wrk.BODY.replace(
        "bench-model", model).encode()
    reply = wait_answering(ep.proc, ep.port, path, body, ep.headers, t.ready_timeout)
    (check_stream if stream else check_completion)(reply)


def _wrk(ep: Endpoint, env: Env, c: int, seconds: float) -> dict[str, Any]:
    script = wrk.write_script(env.workdir / f"wrk-{ep.port}-{len(ep.headers)}.lua",
                              wrk.BODY.replace("bench-model", ep.json_model), ep.headers)
    return wrk.run(ep.url, script, connections=c, seconds=seconds)


def _stream(ep: Endpoint, c: int, seconds: float) -> dict[str, Any]:
    return stream_client.run(ep.url, ep.stream_model, concurrency=c, seconds=seconds,
                             headers=ep.headers)


def _mem(proc: Proc | None) -> dict[str, float] | None:
    if proc is None:
        return None
    return {"rss_mb": round(proc.rss_mb(), 1), "cpu_s": round(proc.cpu_seconds(), 2)}


@dataclass
class Running:
    """A target's processes: one for both upstreams, or one per upstream (bare, direct)."""

    target: Target
    json: Endpoint
    stream: Endpoint
    startup_s: float = 0.0

    def procs(self) -> list[Proc]:
        out = [e.proc for e in (self.json, self.stream) if e.proc is not None]
        return list(dict.fromkeys(out))


def start_target(t: Target, env: Env) -> Running:
    t0 = time.monotonic()
    if t.shared:
        ep = t.start(env)
        run = Running(t, ep, ep)
    else:
        run = Running(t, t.start(env, env.upstreams.json_base),
                      t.start(env, env.upstreams.stream_base))
    _ready(t, run.json, run.json.json_model, False)
    _ready(t, run.stream, run.stream.stream_model, True)
    run.startup_s = round(time.monotonic() - t0, 2)
    return run


def _best(runs: list[dict[str, Any]], key: Any, lowest: bool) -> dict[str, Any]:
    return (min if lowest else max)(runs, key=key)


def _measured(fn: Any, ep: Endpoint) -> dict[str, Any]:
    """One measurement, with the proxy's own CPU time per request (robust where wall-clock
    throughput is not: another process on the core steals wall time, not our CPU time) and
    the CPU that everything else on the machine used meanwhile."""
    bg = Background()
    cpu0 = ep.proc.cpu_seconds() if ep.proc else 0.0
    res: dict[str, Any] = fn(ep)
    res["background_cpu_pct"] = round(bg.cpu_pct(), 1)
    if ep.proc is not None and res["requests"]:
        cpu_us = (ep.proc.cpu_seconds() - cpu0) * 1e6 / res["requests"]
        res["proxy_cpu_us_per_request"] = round(cpu_us, 1)
    return res


def run_all(targets: list[Target], env: Env, plan: Plan) -> dict[str, dict[str, Any]]:
    """Start every target, then run each scenario round-robin over the targets `repeat` times,
    so that whatever else the machine is doing falls on all of them alike. A scenario's
    reported run is the best of its repeats (background load only ever slows a run down);
    every run is kept under `runs`."""
    running: dict[str, Running] = {}
    out: dict[str, dict[str, Any]] = {}
    try:
        for t in targets:
            log(f"start {t.name}")
            r = running[t.name] = start_target(t, env)
            out[t.name] = {"name": t.name, "label": t.label, "startup_s": r.startup_s,
                           # Per process: the bare pass-throughs run one per upstream.
                           "rss_idle_mb": round(max(p.rss_mb() for p in r.procs()), 1)
                           if r.procs() else None,
                           "runs": {"a_latency": [], "b_throughput": [], "c_stream": []}}
        for name, r in running.items():
            log(f"warm-up {name}: {plan.warmup:g} s non-streaming + {plan.warmup:g} s streaming")
            _wrk(r.json, env, plan.c_throughput, plan.warmup)
            _stream(r.stream, plan.c_stream, plan.warmup)
        scenarios = (
            ("a_latency", "json", lambda ep: _wrk(ep, env, plan.c_latency, plan.seconds),
             lambda x: x["latency_us"]["p50"], True),
            ("b_throughput", "json",
             lambda ep: _wrk(ep, env, plan.c_throughput, plan.seconds),
             lambda x: x["rps"], False),
            ("c_stream", "stream", lambda ep: _stream(ep, plan.c_stream, plan.seconds),
             lambda x: x["ttft_ms"]["p50"], True),
        )
        for key, which, fn, rank, lowest in scenarios:
            if key[0] not in plan.scenarios:
                continue
            for i in range(plan.repeat):
                for name, r in running.items():
                    log(f"{key} round {i + 1}/{plan.repeat}: {name}")
                    out[name]["runs"][key].append(_measured(fn, getattr(r, which)))
            for name in running:
                out[name][key] = _best(out[name]["runs"][key], rank, lowest)
        for name, r in running.items():
            if not r.json.proc:
                continue
            # Where wall-clock numbers are noisy, CPU per request is not: the median over every
            # measurement, as µs of proxy CPU per request.
            out[name]["cpu_us_per_request"] = {
                k: sorted(v)[len(v) // 2] for k, v in (
                    (k, [x["proxy_cpu_us_per_request"] for x in runs
                         if "proxy_cpu_us_per_request" in x])
                    for k, runs in out[name]["runs"].items()) if v}
        for name, r in running.items():
            if r.procs():
                mems = [_mem(p) for p in r.procs()]
                out[name]["after_run"] = mems
                out[name]["rss_mb"] = max(m["rss_mb"] for m in mems if m)
                out[name]["cpu_s"] = round(sum(m["cpu_s"] for m in mems if m), 1)
        for name in plan.soak_targets:
            if name in running:
                out[name]["soak"] = soak(running[name].json, env, plan)
    finally:
        for r in running.values():
            for p in r.procs():
                env.procs.stop(p)
    return out


def soak(ep: Endpoint, env: Env, plan: Plan) -> dict[str, Any]:
    """RSS against requests served: wrk at the throughput concurrency in slices until
    `soak_requests` (or `soak_max_s`), sampling RSS after each slice."""
    assert ep.proc is not None
    log(f"soak: {plan.soak_requests} requests, RSS after each {plan.soak_slice_s:g} s slice")
    samples = [{"requests": 0, "rss_mb": round(ep.proc.rss_mb(), 1)}]
    total, errors = 0, 0
    deadline = time.monotonic() + plan.soak_max_s
    while total < plan.soak_requests and time.monotonic() < deadline:
        r = _wrk(ep, env, plan.c_throughput, plan.soak_slice_s)
        total += r["requests"]
        errors += r["error_count"]
        samples.append({"requests": total, "rss_mb": round(ep.proc.rss_mb(), 1)})
    first = samples[1]["rss_mb"] if len(samples) > 1 else samples[0]["rss_mb"]
    return {"requests": total, "errors": errors, "samples": samples,
            "rss_first_slice_mb": first, "rss_end_mb": samples[-1]["rss_mb"],
            "growth_after_first_slice_mb": round(samples[-1]["rss_mb"] - first, 1)}


def derive(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overheads over direct, ratios to the bare aiohttp pass-through, and the targets."""
    direct = results.get("direct")
    bare = results.get("bare-aiohttp")
    lite = results.get("litellm")
    d: dict[str, Any] = {}
    for name, r in results.items():
        row: dict[str, Any] = {}
        if direct and "a_latency" in r:
            a, da = r["a_latency"]["latency_us"], direct["a_latency"]["latency_us"]
            row["added_p50_us"] = a["p50"] - da["p50"]
            row["added_p99_us"] = a["p99"] - da["p99"]
        if direct and "c_stream" in r:
            c, dc = r["c_stream"], direct["c_stream"]
            row["ttft_overhead_p50_ms"] = c["ttft_ms"]["p50"] - dc["ttft_ms"]["p50"]
            row["ttft_overhead_p99_ms"] = c["ttft_ms"]["p99"] - dc["ttft_ms"]["p99"]
            row["total_overhead_p50_ms"] = c["total_ms"]["p50"] - dc["total_ms"]["p50"]
        d[name] = row
    for name, row in d.items():
        r = results[name]
        cpu = _cpu_per_request(r)
        if cpu:
            row["cpu_us_per_request"] = cpu
            row["rps_per_core_from_cpu"] = 1e6 / cpu
        if bare and name != "bare-aiohttp" and "b_throughput" in r:
            row["rps_vs_bare"] = r["b_throughput"]["rps"] / bare["b_throughput"]["rps"]
            bare_cpu = _cpu_per_request(bare)
            if cpu and bare_cpu:
                row["cpu_rps_vs_bare"] = bare_cpu / cpu
        row["cpu_us_per_stream"] = _cpu_per_request(r, "c_stream")
        if lite and "b_throughput" in r and lite["b_throughput"]["rps"]:
            row["rps_vs_litellm"] = r["b_throughput"]["rps"] / lite["b_throughput"]["rps"]
            lite_cpu = _cpu_per_request(lite)
            if cpu and lite_cpu:
                row["cpu_rps_vs_litellm"] = lite_cpu / cpu
        if bare and name != "bare-aiohttp":
            b = d["bare-aiohttp"]
            if b.get("added_p50_us", 0) > 0 and "added_p50_us" in row:
                row["added_p50_vs_bare"] = row["added_p50_us"] / b["added_p50_us"]
            if b.get("ttft_overhead_p50_ms", 0) > 0 and "ttft_overhead_p50_ms" in row:
                row["ttft_overhead_vs_bare"] = (row["ttft_overhead_p50_ms"]
                                                / b["ttft_overhead_p50_ms"])
    return d


def _cpu_per_request(r: dict[str, Any], key: str = "b_throughput") -> float | None:
    """Median over a scenario's runs of the proxy's CPU µs per request."""
    vals = sorted(x["proxy_cpu_us_per_request"] for x in r.get("runs", {}).get(key, [])
                  if x.get("proxy_cpu_us_per_request"))
    return vals[len(vals) // 2] if vals else None


def check_targets(results: dict[str, Any], derived: dict[str, Any],
                  name: str = "gateway") -> list[dict[str, Any]]:
    """The issue's targets for one gateway variant: each with its measured value and verdict."""
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
    return checks


def save(doc: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"overhead-{stamp}.json"
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    path.write_text(text)
    (results_dir / "overhead-latest.json").write_text(text)
    return path
