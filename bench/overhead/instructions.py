"""Instructions per request under callgrind: the cost measure that a shared machine cannot move.

    .venv/bin/python -m bench.overhead.instructions --targets bare-aiohttp,gateway \
        --requests 200 --body-kb 200 [--stream] [--responses] [--patched NAME=DIR]

CPU time per request (the overhead benchmark's measure) still moves by ±30 % when other
processes share the core's caches and its hyperthread sibling. Instruction counts do not:
each target runs under `valgrind --tool=callgrind` (every thread of the process counted), its
counters are zeroed once it has warmed up, `--requests` requests are sent (concurrency 8, or
streams with `--stream`), and the counters are dumped. Instructions are not time — a cache
miss costs no instruction — so they decide between two versions of one code path, and the
wall-clock benchmark (`python -m bench.overhead`) reports what a client sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.overhead import runner
from bench.overhead.apis import padded
from bench.overhead.procs import Procs, pin_self
from bench.overhead.runner import Plan, log
from bench.overhead.targets import ROOT, TARGETS, Endpoint, Env, Target, patched

RESULTS = ROOT / "bench" / "results"


def _wrapper(workdir: Path) -> str:
    """A python that runs under callgrind, dumping into the work dir."""
    exe = shutil.which("valgrind")
    if exe is None:
        sys.exit("valgrind is missing: apt-get install -y valgrind")
    path = workdir / "python-callgrind"
    path.write_text("#!/bin/sh\n"
                    f"exec {exe} --tool=callgrind --callgrind-out-file={workdir}/cg.%p "
                    "--dump-instr=no --combine-dumps=no --separate-threads=yes "
                    f"-q {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _control(*args: str) -> str:
    out = subprocess.run(["callgrind_control", *args], capture_output=True, text=True,
                         timeout=120, check=False)
    return out.stdout + out.stderr


def _dumped_ir(workdir: Path, pid: int, before: set[Path], keep: Path) -> tuple[int, int]:
    """Instructions in the dump `callgrind_control -d` just wrote: all threads, and the main
    thread's alone (the event loop: the request's own path). The other threads — the ledger
    writer, the response store's workers — batch what they get within a wall-clock interval,
    so under callgrind's 50× slowdown their batches are smaller and their cost per request
    higher than at full speed. The dump is kept as `keep` (`callgrind_annotate` reads it)."""
    total = main = 0
    for path in sorted(workdir.glob(f"cg.{pid}*")):
        if path in before:
            continue
        shutil.copy(path, keep.with_name(f"{keep.name}.{path.name}"))
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                # `--separate-threads`: one file per thread, `cg.<pid>.<part>-<thread>`.
                if path.name.endswith("-01"):
                    main += int(line.split()[1])
                break
    return total, main


async def _load(ep: Endpoint, body: bytes, n: int, concurrency: int, stream: bool) -> int:
    url = ep.url
    headers = {"Content-Type": "application/json", **ep.headers}
    done = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        async def one() -> None:
            nonlocal done
            async with sem, s.post(url, data=body, headers=headers) as r:
                data = await r.read()
                if r.status != 200 or (stream and b"[DONE]" not in data):
                    raise RuntimeError(f"{url}: HTTP {r.status} {data[:300]!r}")
                if ep.cache is not None and r.headers.get("x-gateway-cache") != ep.cache:
                    raise RuntimeError(f"{url}: x-gateway-cache "
                                       f"{r.headers.get('x-gateway-cache')!r}, not {ep.cache!r}")
                done += 1
        await asyncio.gather(*(one() for _ in range(n)))
    return done


def _body(ep: Endpoint, env: Env, stream: bool) -> bytes:
    if stream:
        return ep.api.stream_body(ep.stream_model, ep.store)
    return padded(ep.api.json_body(ep.json_model, ep.store), env.body_kb).encode()


def _quiet(pid: int, busy: float = 0.25, limit_s: float = 600.0) -> None:
    """Wait until the process uses under `busy` of a core (all threads) over a second.

    A gateway with `estimate_missing_usage` builds its tokenizer in a thread after start-up
    (about a billion instructions): counted while it runs, it lengthens the row's seconds and
    takes the GIL from the loop, and the per-request counts then depend on which target was
    started first."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    deadline = time.monotonic() + limit_s
    before = cpu()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu()
        if now - before < busy:
            return
        before = now
    log(f"pid {pid} still busy after {limit_s:.0f} s; counting anyway")


def _counted(env: Env, pid: int, keep: Path, action: Any) -> tuple[int, int, float]:
    """(instructions, event-loop thread's, seconds counted) while `action()` runs."""
    _control("-z", str(pid))
    t0 = time.monotonic()
    action()
    before = set(env.workdir.glob(f"cg.{pid}*"))
    _control("-d", str(pid))
    span = time.monotonic() - t0
    deadline = time.monotonic() + 60
    ir = loop_ir = 0
    while time.monotonic() < deadline and not ir:
        time.sleep(0.5)
        ir, loop_ir = _dumped_ir(env.workdir, pid, before, keep)
    return ir, loop_ir, span


def measure(t: Target, env: Env, n: int, stream: bool, responses: bool = False,
            idle_s: float = 0.0) -> list[dict[str, Any]]:
    """Each row of the target (its chat row; with `responses`, its Responses rows too) on the
    same processes: counters zeroed after that row's warm-up, dumped after its requests.

    With `idle_s`, the event loop is also counted idle for that long, and each row gets
    `event_loop_net_per_request`: its event-loop count less the idle rate × its seconds.
    The loop's timers (log flushes, policy reload checks) fire by the wall clock, and under
    callgrind a row's seconds vary with whatever else the machine runs, so this takes out
    the one part of the count that the machine's load can move."""
    run = runner.start_target(replace(t, ready_timeout=600.0), env, responses)
    out: list[dict[str, Any]] = []
    try:
        for lane in run.lanes(responses):
            ep = lane.stream if stream else lane.json
            if ep.proc is None:
                continue  # direct: no process of ours to count
            body = _body(ep, env, stream)
            asyncio.run(_load(ep, body, max(20, n // 10), 8, stream))  # warm: pools, caches
            _quiet(ep.proc.pid)
            served = 0

            def load(ep: Endpoint = ep, body: bytes = body) -> None:
                nonlocal served
                served = asyncio.run(_load(ep, body, n, 8, stream))

            keep = RESULTS / f"callgrind-{lane.key.replace('/', '-')}"
            ir, loop_ir, span = _counted(env, ep.proc.pid, keep, load)
            out.append({"target": lane.key, "label": lane.label, "api": lane.api,
                        "pid": ep.proc.pid, "requests": served, "instructions": ir,
                        "event_loop_instructions": loop_ir, "counted_s": round(span, 2),
                        "instructions_per_request": round(ir / served) if served else None,
                        "event_loop_per_request": round(loop_ir / served) if served else None})
            log(json.dumps(out[-1]))
        if idle_s > 0:
            for proc in run.procs():
                keep = RESULTS / f"callgrind-{t.name}-idle"
                _, idle, span = _counted(env, proc.pid, keep, lambda: time.sleep(idle_s))
                rate = idle / span
                log(f"{t.name} (pid {proc.pid}) idle: {rate:,.0f} event-loop instructions/s")
                for r in out:
                    if r["pid"] == proc.pid and r["requests"]:
                        r["idle_event_loop_per_s"] = round(rate)
                        r["event_loop_net_per_request"] = round(
                            (r["event_loop_instructions"] - rate * r["counted_s"])
                            / r["requests"])
    finally:
        for p in run.procs():
            env.procs.stop(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead.instructions",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="bare-aiohttp,gateway")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--body-kb", type=int, default=0)
    p.add_argument("--stream", action="store_true", help="streams (20 events) instead")
    p.add_argument("--chunks", type=int, default=20, help="SSE events per stream")
    p.add_argument("--chunk-delay-ms", type=float, default=0.5,
                   help="between a stream's events; per-chunk counts want each event in its "
                        "own read even under callgrind's slowdown (20 ms does at c=8)")
    p.add_argument("--responses", action="store_true",
                   help="each target's Responses rows too (on the same processes)")
    p.add_argument("--idle-s", type=float, default=0.0,
                   help="also count each process idle this long, and subtract that rate")
    p.add_argument("--patched", metavar="NAME=DIR", action="append", default=[])
    p.add_argument("--patched-only", action="store_true",
                   help="measure only the patched copies of the gateway targets")
    a = p.parse_args(argv)
    selected = [TARGETS[n.strip()] for n in a.targets.split(",") if n.strip()]
    for spec in a.patched:
        tag, _, src = spec.partition("=")
        selected += [patched(t, str(Path(src).resolve()), tag) for t in list(selected)
                     if t.name.startswith("gateway") and "+" not in t.name]
    if a.patched_only:
        selected = [t for t in selected if "+" in t.name or not t.name.startswith("gateway")]
    # A `timeout` (SIGTERM) still stops the targets: valgrind left running would eat a core.
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(143))
    pin_self()
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    procs = Procs(workdir)
    plan = replace(Plan(), chunks=a.chunks, chunk_delay_ms=a.chunk_delay_ms)
    results = []
    try:
        ups = runner.start_mocks(procs, plan, workdir, shutil.which("nginx") or "nginx")
        env = Env(procs, workdir, ups, "redis://127.0.0.1:6379/0",
                  f"bench-{uuid.uuid4().hex[:8]}:", python=_wrapper(workdir),
                  body_kb=a.body_kb)
        for t in selected:
            log(f"{t.name}: {a.requests} {'streams' if a.stream else 'requests'} "
                "under callgrind")
            results += measure(t, env, a.requests, a.stream, a.responses, a.idle_s)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    what = "stream" if a.stream else "request"
    shape = f", streams of {a.chunks} events" if a.stream else ""
    keys = ["event_loop_per_request", "instructions_per_request"]
    heads = ["event loop", "all threads"]
    if a.idle_s > 0:
        keys.insert(0, "event_loop_net_per_request")
        heads.insert(0, "event loop, less idle")
    print(f"| target ({a.body_kb or 'small'} KiB body{shape}), instructions per {what} | "
          + " | ".join(f"{h} | − bare" for h in heads) + " |")
    print("|---|" + "---|---|" * len(keys))
    for r in results:
        # Each row against the bare pass-through of its own API (a Responses reply is larger).
        bare = next((f for f in results
                     if f["target"].startswith("bare") and f["api"] == r["api"]), None)
        cells = []
        for k in keys:
            per, floor = r.get(k), bare.get(k) if bare else None
            cells += [f"{per:,}" if per else "—", f"{per - floor:,}" if floor and per else "—"]
        print(f"| {r['label']} | " + " | ".join(cells) + " |")
    (RESULTS / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "body_kb": a.body_kb, "stream": a.stream,
         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
