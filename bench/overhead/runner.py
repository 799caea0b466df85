"""One run: start the mocks, then start every target, warm it, measure the scenarios
round-robin over every row (a target through one API), its memory, a soak; stop it.
Everything is bounded in time."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.overhead import mock_nginx, stream_client, wrk
from bench.overhead.apis import CHAT, RESPONSES, padded
from bench.overhead.procs import (
    LOAD_CPU,
    Background,
    Proc,
    free_port,
    reply_header,
    wait_answering,
)
from bench.overhead.targets import Endpoint, Env, Target, Upstreams

# Scenario letters; an `r` in front runs the same scenario through the Responses API.
CHAT_SCENARIOS = ("a", "b", "c")
RESPONSES_SCENARIOS = ("ra", "rb", "rc")


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
    # Growth is also reported from the first sample at or past this many requests: what
    # settles in the first requests (pools, caches, the allocator's arenas) is not a leak.
    soak_from: int = 100_000
    soak_targets: tuple[str, ...] = ("gateway", "gateway-auth")
    scenarios: tuple[str, ...] = CHAT_SCENARIOS

    @property
    def responses(self) -> bool:
        return any(s in RESPONSES_SCENARIOS for s in self.scenarios)


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
    for api, model in ((CHAT, "bench-model"), (RESPONSES, "bench-responses")):
        body = api.json_body(model, None).encode()
        api.check_reply(wait_answering(ng, nginx_port, "/v1" + api.path, body, {}, 10))
        api.check_stream(wait_answering(sse, sse_port, "/v1" + api.path,
                                        api.stream_body(model, None), {}, 10))
    return Upstreams(f"http://127.0.0.1:{nginx_port}/v1", f"http://127.0.0.1:{sse_port}/v1")


def _ready(t: Target, ep: Endpoint, stream: bool) -> None:
    if ep.proc is None:
        return
    path = ep.url.split(str(ep.port), 1)[1]
    body = ep.api.stream_body(ep.stream_model, ep.store) if stream \
        else ep.api.json_body(ep.json_model, ep.store).encode()
    reply = wait_answering(ep.proc, ep.port, path, body, ep.headers, t.ready_timeout)
    (ep.api.check_stream if stream else ep.api.check_reply)(reply)
    if ep.cache is not None:
        got = reply_header(ep.port, path, body, ep.headers, "x-gateway-cache")
        if got != ep.cache:
            raise RuntimeError(f"{t.name}: x-gateway-cache {got!r}, not {ep.cache!r}: the load "
                               "would measure another path than the target names")


def _wrk(ep: Endpoint, env: Env, c: int, seconds: float) -> dict[str, Any]:
    body = padded(ep.api.json_body(ep.json_model, ep.store), env.body_kb)
    script = wrk.write_script(env.workdir / f"wrk-{ep.port}-{len(ep.headers)}.lua", body,
                              ep.headers)
    return wrk.run(ep.url, script, connections=c, seconds=seconds)


def _stream(ep: Endpoint, c: int, seconds: float) -> dict[str, Any]:
    return stream_client.run(ep.url, ep.api.stream_body(ep.stream_model, ep.store),
                             concurrency=c, seconds=seconds, headers=ep.headers,
                             marks=ep.api.marks)


def _mem(proc: Proc | None) -> dict[str, float] | None:
    if proc is None:
        return None
    return {"rss_mb": round(proc.rss_mb(), 1), "cpu_s": round(proc.cpu_seconds(), 2)}


@dataclass
class Lane:
    """One row of the tables: a target through one API (and model)."""

    key: str       # the target's name for its chat row, "<target>/<variant>" for the others
    label: str
    api: str
    json: Endpoint
    stream: Endpoint


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

    def lanes(self, responses: bool) -> list[Lane]:
        t = self.target
        out = [Lane(t.name, t.label, CHAT.name, self.json, self.stream)]
        if responses:
            out += [Lane(f"{t.name}/{v.key}", f"{t.label} · {v.label}", RESPONSES.name,
                         v.json, v.stream) for v in t.variants(self.json, self.stream)]
        return out


def start_target(t: Target, env: Env, responses: bool = False) -> Running:
    t0 = time.monotonic()
    if t.shared:
        ep = t.start(env)
        run = Running(t, ep, ep)
    else:
        run = Running(t, t.start(env, env.upstreams.json_base),
                      t.start(env, env.upstreams.stream_base))
    for lane in run.lanes(responses):
        _ready(t, lane.json, False)
        _ready(t, lane.stream, True)
    run.startup_s = round(time.monotonic() - t0, 2)
    for proc in run.procs():
        _settle(proc)
    return run


def _settle(proc: Proc, idle_pct: float = 3.0, window_s: float = 0.5,
            limit_s: float = 60.0) -> None:
    """Wait until a target that answers has also finished starting up: the gateway loads its
    tokenizers in a background thread after it says ready (about a second of CPU, more under
    load), and a warm-up or measurement that overlaps it counts that CPU per request."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        cpu0 = proc.cpu_seconds()
        time.sleep(window_s)
        if (proc.cpu_seconds() - cpu0) * 100 / window_s <= idle_pct:
            return
    log(f"{proc.name}: still busy {limit_s:g} s after it answered; measuring anyway")


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


Scenario = tuple[str, str, str, Callable[[Endpoint], dict[str, Any]], Any, bool]


def _scenarios(env: Env, plan: Plan) -> list[Scenario]:
    """(letter, result key, endpoint, measurement, what ranks the rounds, lowest best)."""
    return [
        ("a", "a_latency", "json", lambda ep: _wrk(ep, env, plan.c_latency, plan.seconds),
         lambda x: x["latency_us"]["p50"], True),
        ("b", "b_throughput", "json",
         lambda ep: _wrk(ep, env, plan.c_throughput, plan.seconds), lambda x: x["rps"], False),
        ("c", "c_stream", "stream", lambda ep: _stream(ep, plan.c_stream, plan.seconds),
         lambda x: x["ttft_ms"]["p50"], True),
    ]


def run_all(targets: list[Target], env: Env, plan: Plan) -> dict[str, dict[str, Any]]:
    """Start every target, then run each scenario round-robin over every row `repeat` times,
    so that whatever else the machine is doing falls on all of them alike — chat and
    Responses rows of one scenario in the same rounds. A scenario's reported run is the best
    of its repeats (background load only ever slows a run down); every run is kept under
    `runs`. Rows are keyed by target name (chat) and `<target>/<variant>` (Responses)."""
    running: dict[str, Running] = {}
    out: dict[str, dict[str, Any]] = {}
    lanes: list[Lane] = []
    try:
        for t in targets:
            log(f"start {t.name}")
            r = running[t.name] = start_target(t, env, plan.responses)
            out[t.name] = {"name": t.name, "label": t.label, "target": t.name,
                           "api": CHAT.name, "startup_s": r.startup_s,
                           # Per process: the bare pass-throughs run one per upstream.
                           "rss_idle_mb": round(max(p.rss_mb() for p in r.procs()), 1)
                           if r.procs() else None,
                           "runs": {"a_latency": [], "b_throughput": [], "c_stream": []}}
        # Every chat row first, then every Responses row: the order of the tables.
        all_lanes = [ln for r in running.values() for ln in r.lanes(plan.responses)]
        lanes = [ln for ln in all_lanes if ln.api == CHAT.name] \
            + [ln for ln in all_lanes if ln.api != CHAT.name]
        for ln in lanes:
            if ln.key not in out:
                out[ln.key] = {"name": ln.key, "label": ln.label, "target": ln.key.split("/")[0],
                               "api": ln.api,
                               "runs": {"a_latency": [], "b_throughput": [], "c_stream": []}}
        for ln in lanes if plan.scenarios else ():  # a soak alone warms up as it goes
            log(f"warm-up {ln.key}: {plan.warmup:g} s non-streaming + {plan.warmup:g} s "
                "streaming")
            _wrk(ln.json, env, plan.c_throughput, plan.warmup)
            _stream(ln.stream, plan.c_stream, plan.warmup)
        for letter, key, which, fn, rank, lowest in _scenarios(env, plan):
            rows = [ln for ln in lanes
                    if (letter if ln.api == CHAT.name else "r" + letter) in plan.scenarios]
            for i in range(plan.repeat):
                for ln in rows:
                    log(f"{key} round {i + 1}/{plan.repeat}: {ln.key}")
                    out[ln.key]["runs"][key].append(_measured(fn, getattr(ln, which)))
            for ln in rows:
                out[ln.key][key] = _best(out[ln.key]["runs"][key], rank, lowest)
        for ln in lanes:
            if not ln.json.proc:
                continue
            # Where wall-clock numbers are noisy, CPU per request is not: the median over every
            # measurement, as µs of proxy CPU per request.
            out[ln.key]["cpu_us_per_request"] = {
                k: sorted(v)[len(v) // 2] for k, v in (
                    (k, [x["proxy_cpu_us_per_request"] for x in runs
                         if "proxy_cpu_us_per_request" in x])
                    for k, runs in out[ln.key]["runs"].items()) if v}
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
    `soak_requests` (or `soak_max_s`), sampling RSS after each slice; growth is reported from
    the first slice and from the first sample at or past `soak_from` requests."""
    assert ep.proc is not None
    log(f"soak: {plan.soak_requests} requests, RSS after each {plan.soak_slice_s:g} s slice")
    samples = [{"requests": 0, "rss_mb": round(ep.proc.rss_mb(), 1), **ep.proc.rss_split_mb()}]
    total, errors = 0, 0
    deadline = time.monotonic() + plan.soak_max_s
    while total < plan.soak_requests and time.monotonic() < deadline:
        r = _wrk(ep, env, plan.c_throughput, plan.soak_slice_s)
        total += r["requests"]
        errors += r["error_count"]
        samples.append({"requests": total, "rss_mb": round(ep.proc.rss_mb(), 1),
                        **ep.proc.rss_split_mb()})
        if len(samples) % 20 == 0:
            log(f"soak: {total:,} requests, RSS {samples[-1]['rss_mb']} MB "
                f"(anonymous {samples[-1]['anon_mb']} MB)")
    first = samples[1]["rss_mb"] if len(samples) > 1 else samples[0]["rss_mb"]
    out: dict[str, Any] = {
        "requests": total, "errors": errors, "samples": samples,
        "rss_first_slice_mb": first, "rss_end_mb": samples[-1]["rss_mb"],
        "growth_after_first_slice_mb": round(samples[-1]["rss_mb"] - first, 1)}
    mark = next((s for s in samples if s["requests"] >= plan.soak_from), None)
    if mark is not None and mark is not samples[-1]:
        out.update({"from_requests": mark["requests"], "rss_from_mb": mark["rss_mb"],
                    "growth_from_mb": round(samples[-1]["rss_mb"] - mark["rss_mb"], 1)})
    return out


def save(doc: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"overhead-{stamp}.json"
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    path.write_text(text)
    (results_dir / "overhead-latest.json").write_text(text)
    return path
