"""`python -m bench.overhead`: proxy overhead on one core — direct vs bare pass-through
(aiohttp, httpx) vs this gateway (three configurations) vs LiteLLM.

    bench/overhead/run.sh                      # setup (nginx, wrk, LiteLLM venv) + full run
    .venv/bin/python -m bench.overhead --quick # ~2 minutes, shorter measurements
    .venv/bin/python -m bench.overhead --targets direct,bare-aiohttp,gateway
    .venv/bin/python -m bench.overhead --scenarios a,b,c,ra,rb,rc   # + the Responses API
    .venv/bin/python -m bench.overhead --profile gateway-auth   # py-spy under load instead

The proxy under test runs on core 1 (`taskset -c 1`); the mocks (nginx, a raw-asyncio SSE
server), wrk, the streaming client and this process run on core 0. Only 127.0.0.1 is used.
Results: a table on stdout, JSON in bench/results/overhead-<time>.json (and -latest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.overhead import derive, profile, report, runner, spread
from bench.overhead.apis import CHAT, RESPONSES
from bench.overhead.procs import Procs, pin_self
from bench.overhead.runner import CHAT_SCENARIOS, RESPONSES_SCENARIOS, Plan, log
from bench.overhead.targets import (
    LITELLM_VENV,
    PG_URL,
    ROOT,
    TARGETS,
    Endpoint,
    Env,
    Gateway,
    Target,
    patched,
    pg_schema,
)

RESULTS = ROOT / "bench" / "results"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gb": round(mem_kb / 1024 ** 2, 1),
            "kernel": platform.release()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "httpx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    py = LITELLM_VENV / "bin" / "python"
    if py.exists():
        r = subprocess.run([str(py), "-c", "import importlib.metadata as m; "
                            "print(m.version('litellm'))"], capture_output=True, text=True,
                           timeout=60, check=False)
        out["litellm"] = r.stdout.strip() or "unknown"
    for tool, args in (("nginx", ["-v"]), ("wrk", ["-v"])):
        exe = shutil.which(tool)
        if exe:
            r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=10,
                               check=False)
            text = (r.stdout + r.stderr).strip().splitlines()
            out[tool] = text[0] if text else "unknown"
    return out


def preflight(names: list[str]) -> str:
    missing = [t for t in ("nginx", "wrk", "taskset") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run bench/overhead/setup.sh "
                 "(apt-get install -y nginx wrk)")
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: the proxy on core 1, load and mocks on core 0")
    if "litellm" in names and not (LITELLM_VENV / "bin" / "litellm").exists():
        sys.exit(f"{LITELLM_VENV} is missing: run bench/overhead/setup.sh, "
                 "or leave litellm out (--targets …)")
    return shutil.which("nginx") or "nginx"


def pg_cleanup(schema: str) -> str:
    """Drop the run's own ledger schema (the gateway-redis-pg target's), whatever it holds."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        return f"dropped schema {schema}"
    except Exception as exc:  # a cleanup must not hide the run's results
        return f"schema {schema} left behind: {exc}"


def redis_cleanup(prefix: str) -> int:
    """Delete the run's Redis keys (its own prefix only; bounded SCAN)."""
    try:
        import redis
    except ImportError:
        return 0
    try:
        r = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        keys = []
        for i, k in enumerate(r.scan_iter(match=prefix + "*", count=1000)):
            keys.append(k)
            if i > 1_000_000:
                break
        for j in range(0, len(keys), 1000):
            r.delete(*keys[j:j + 1000])
        return len(keys)
    except redis.RedisError:
        return 0


def run_profile(target: Target, env: Env, plan: Plan, seconds: float) -> dict[str, Any]:
    """py-spy on one target during (b) and during (c) — with `rb`/`rc` in `--scenarios`, on
    each of its Responses rows instead; collapsed stacks and a summary per measurement."""
    name = target.name
    run = runner.start_target(target, env, plan.responses)
    out: dict[str, Any] = {"target": name}
    RESULTS.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in plan.scenarios if s in ("b", "c", "rb", "rc")] or ["b", "c"]
    lanes = run.lanes(plan.responses)
    try:
        for lane in lanes:
            runner._wrk(lane.json, env, plan.c_throughput, plan.warmup)
            runner._stream(lane.stream, plan.c_stream, plan.warmup)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for scen in wanted:
            for lane in lanes:
                if (lane.api == CHAT.name) != (len(scen) == 1):
                    continue
                ep = lane.json if scen[-1] == "b" else lane.stream
                if ep.proc is None:
                    continue
                # `b`, `c` (chat) or `rb-responses-native`, …: the key in the output.
                tag = scen if lane.api == CHAT.name else f"{scen}-{lane.key.split('/', 1)[1]}"
                out[tag] = _profile_one(ep, env, plan, seconds,
                                        RESULTS / f"profile-{name}-{tag}-{stamp}.txt",
                                        streaming=scen[-1] == "c")
    finally:
        for p in run.procs():
            env.procs.stop(p)
    return out


def _profile_one(ep: Endpoint, env: Env, plan: Plan, seconds: float, raw: Path,
                 streaming: bool) -> dict[str, Any]:
    assert ep.proc is not None
    log(f"profile {raw.stem}: py-spy {seconds:g} s")
    spy = profile.start(ep.proc.pid, seconds + 1, raw)
    time.sleep(0.5)  # py-spy attached before the load starts
    if streaming:
        load = runner._stream(ep, plan.c_stream, seconds)
        rate = f"{load['streams_per_s']:.0f} streams/s while sampled"
    else:
        load = runner._wrk(ep, env, plan.c_throughput, seconds)
        rate = f"{load['rps']:.0f} req/s while sampled"
    profile.finish(spy, seconds + 1)
    return {"raw": str(raw.relative_to(ROOT)), "load": rate, **profile.summarize(raw)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="4 s measurements, 1 s warm-ups, 20,000-request soak")
    p.add_argument("--seconds", type=float, default=None, help="length of each measurement")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated, from: {', '.join(TARGETS)}")
    p.add_argument("--repeat", type=int, default=None,
                   help="rounds per scenario, round-robin over targets; the best is reported")
    p.add_argument("--soak-requests", type=int, default=None)
    p.add_argument("--soak-max-s", type=float, default=None,
                   help="stop the soak after this many seconds (default 180)")
    p.add_argument("--soak-from", type=int, default=None,
                   help="also report RSS growth from this many requests on (default 100000)")
    p.add_argument("--soak-targets", default=None,
                   help="comma-separated targets to soak (default gateway,gateway-auth); a "
                        "--patched copy is named TARGET+NAME")
    p.add_argument("--soak-only", action="store_true",
                   help="no scenarios: start the targets and soak them (memory over requests)")
    p.add_argument("--profile", metavar="TARGET", default=None,
                   help="profile this target with py-spy instead of the comparison")
    p.add_argument("--patched", metavar="NAME=DIR", action="append", default=[],
                   help="also run each selected gateway target from DIR/gateway (a modified "
                        "copy of the package) as TARGET+NAME, interleaved with the original; "
                        "repeatable")
    p.add_argument("--scenarios", default="a,b,c",
                   help="which of a,b,c to run, and of ra,rb,rc: the same through the "
                        "Responses API (not run unless named)")
    p.add_argument("--body-kb", type=int, default=0,
                   help="pad the non-streaming prompt (scenarios a, b, ra, rb) to a body of "
                        "about this many KiB, e.g. 200 for a RAG or coding-agent prompt")
    p.add_argument("--chunks", type=int, default=None,
                   help="SSE events per streamed reply (default 20); with a second run at "
                        "another count, the difference per event is the per-chunk cost")
    p.add_argument("--chunk-delay-ms", type=float, default=None,
                   help="milliseconds before each SSE event (default 5)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="write the results JSON to PATH (bench/results/ is left alone)")
    a = p.parse_args(argv)

    plan = Plan()
    if a.quick:
        plan = replace(plan, seconds=4.0, warmup=1.0, soak_requests=20_000, soak_slice_s=2.0)
    if a.seconds:
        plan = replace(plan, seconds=a.seconds)
    if a.repeat:
        plan = replace(plan, repeat=a.repeat)
    if a.chunks:
        plan = replace(plan, chunks=a.chunks)
    if a.chunk_delay_ms is not None:
        plan = replace(plan, chunk_delay_ms=a.chunk_delay_ms)
    scenarios = tuple(x.strip() for x in a.scenarios.split(",") if x.strip())
    bad = [x for x in scenarios if x not in CHAT_SCENARIOS + RESPONSES_SCENARIOS]
    if a.soak_only:
        scenarios = ()
    elif bad or not scenarios:
        sys.exit(f"--scenarios {a.scenarios}: choose from "
                 f"{','.join(CHAT_SCENARIOS + RESPONSES_SCENARIOS)}")
    plan = replace(plan, scenarios=scenarios)
    if a.soak_requests is not None:
        plan = replace(plan, soak_requests=a.soak_requests)
    if a.soak_max_s is not None:
        plan = replace(plan, soak_max_s=a.soak_max_s)
    if a.soak_from is not None:
        plan = replace(plan, soak_from=a.soak_from)
    if a.soak_targets is not None:
        plan = replace(plan, soak_targets=tuple(
            n.strip() for n in a.soak_targets.split(",") if n.strip()))
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        sys.exit(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    if a.profile:
        names = [a.profile]
    selected = [TARGETS[n] for n in names]
    for spec in a.patched:
        tag, _, src = spec.partition("=")
        if not src or not (Path(src) / "gateway" / "__init__.py").exists():
            sys.exit(f"--patched {spec}: want NAME=DIR with DIR/gateway/__init__.py")
        src = str(Path(src).resolve())
        selected += [patched(t, src, tag) for t in selected[:len(names)]
                     if t.name.startswith("gateway")]
    nginx = preflight(names)
    pin_self()
    os.chdir(ROOT)

    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    procs = Procs(workdir)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    started = time.time()
    try:
        log(f"mocks: nginx + mock_sse (core 0); work dir {workdir}")
        ups = runner.start_mocks(procs, plan, workdir, nginx)
        env = Env(procs, workdir, ups, REDIS_URL, prefix, body_kb=a.body_kb)
        if a.profile:
            for t in selected:  # the target, then its patched variants
                prof = run_profile(t, env, plan, plan.seconds)
                print(json.dumps(prof, indent=2, ensure_ascii=False))
            return 0
        results = runner.run_all(selected, env, plan)
    finally:
        procs.stop_all()
        if any(n.startswith("gateway-redis") for n in names):
            log(f"redis: removed {redis_cleanup(prefix)} keys under {prefix!r}")
        if any(t.postgres for n in names if isinstance(t := TARGETS[n], Gateway)):
            log(f"postgres: {pg_cleanup(pg_schema(prefix))}")
        shutil.rmtree(workdir, ignore_errors=True)

    derived = derive.derive(results)
    # One list per gateway target (its chat row); the Responses rows' checks are in it.
    targets = {n: derive.check_targets(results, derived, n)
               for n in results if n.startswith("gateway") and "/" not in n}
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join(["python -m bench.overhead", *(argv or sys.argv[1:])]),
        "machine": machine(), "versions": versions(),
        "plan": {**plan.__dict__, "soak_targets": list(plan.soak_targets)},
        "pinning": {"system_under_test_cpu": 1, "load_and_mocks_cpu": 0},
        "request_body": CHAT.json_body("bench-model", None) if not a.body_kb
        else f"{CHAT.json_body('bench-model', None)} with its prompt padded to {a.body_kb} KiB",
        "body_kb": a.body_kb,
        "stream_body": CHAT.stream_body("bench-stream", None).decode(),
        **({"responses_request_body": RESPONSES.json_body("bench-responses", False),
            "responses_stream_body": RESPONSES.stream_body("bench-responses-stream",
                                                           False).decode()}
           if plan.responses else {}),
        "results": results, "derived": derived, "targets": targets,
    }
    print(report.render(doc))
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=2, ensure_ascii=False))
        log(f"results: {a.out}")
    elif not a.no_save:
        path = runner.save(doc, RESULTS)
        log(f"results: {path.relative_to(ROOT)}")
        if plan.repeat >= 2 and plan.scenarios:  # the figures to compare across reruns
            print("\n### Every round: median, range and others' CPU\n")
            print(spread.table(spread.rounds([path]), pairs=spread.paired([path])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
