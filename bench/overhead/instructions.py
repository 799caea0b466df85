"""Instructions per request under callgrind: the cost measure that a shared machine cannot move.

    .venv/bin/python -m bench.overhead.instructions --targets bare-aiohttp,gateway \
        --requests 200 --body-kb 200 [--stream] [--patched NAME=DIR]

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
                    f"--dump-instr=no --combine-dumps=no -q {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _control(*args: str) -> str:
    out = subprocess.run(["callgrind_control", *args], capture_output=True, text=True,
                         timeout=120, check=False)
    return out.stdout + out.stderr


def _dumped_ir(workdir: Path, pid: int, before: set[Path], keep: Path) -> int:
    """Instructions in the dump `callgrind_control -d` just wrote (all threads); the dump is
    kept as `keep` (`callgrind_annotate` shows where the instructions went)."""
    total = 0
    for path in sorted(workdir.glob(f"cg.{pid}*")):
        if path in before:
            continue
        shutil.copy(path, keep.with_name(f"{keep.name}.{path.name}"))
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


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
                done += 1
        await asyncio.gather(*(one() for _ in range(n)))
    return done


def measure(t: Target, env: Env, n: int, stream: bool) -> dict[str, Any]:
    run = runner.start_target(replace(t, ready_timeout=600.0), env)
    ep = run.stream if stream else run.json
    body = (ep.api.stream_body(ep.stream_model, ep.store) if stream else
            padded(ep.api.json_body(ep.json_model, ep.store), env.body_kb).encode())
    try:
        asyncio.run(_load(ep, body, max(20, n // 10), 8, stream))  # warm: pools, caches
        assert ep.proc is not None
        pid = ep.proc.pid
        _control("-z", str(pid))
        t0 = time.monotonic()
        served = asyncio.run(_load(ep, body, n, 8, stream))
        wall = time.monotonic() - t0
        before = set(env.workdir.glob(f"cg.{pid}*"))
        _control("-d", str(pid))
        deadline = time.monotonic() + 60
        ir = 0
        while time.monotonic() < deadline and not ir:
            time.sleep(0.5)
            ir = _dumped_ir(env.workdir, pid, before, RESULTS / f"callgrind-{t.name}")
    finally:
        for p in run.procs():
            env.procs.stop(p)
    return {"target": t.name, "label": t.label, "requests": served, "instructions": ir,
            "instructions_per_request": round(ir / served) if served else None,
            "wall_s_under_callgrind": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead.instructions",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="bare-aiohttp,gateway")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--body-kb", type=int, default=0)
    p.add_argument("--stream", action="store_true", help="streams (20 events) instead")
    p.add_argument("--chunks", type=int, default=20, help="SSE events per stream")
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
    plan = replace(Plan(), chunks=a.chunks, chunk_delay_ms=0.5)
    results = []
    try:
        ups = runner.start_mocks(procs, plan, workdir, shutil.which("nginx") or "nginx")
        env = Env(procs, workdir, ups, "redis://127.0.0.1:6379/0",
                  f"bench-{uuid.uuid4().hex[:8]}:", python=_wrapper(workdir),
                  body_kb=a.body_kb)
        for t in selected:
            log(f"{t.name}: {a.requests} {'streams' if a.stream else 'requests'} "
                "under callgrind")
            results.append(measure(t, env, a.requests, a.stream))
            log(json.dumps(results[-1]))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    floor = next((r["instructions_per_request"] for r in results
                  if r["target"].startswith("bare")), None)
    what = "stream" if a.stream else "request"
    shape = f", streams of {a.chunks} events" if a.stream else ""
    print(f"| target ({a.body_kb or 'small'} KiB body{shape}) | instructions per {what} "
          "| vs bare |")
    print("|---|---|---|")
    for r in results:
        per = r["instructions_per_request"]
        ratio = f"{per / floor:.2f}×" if floor and per else "—"
        print(f"| {r['label']} | {per:,} | {ratio} |")
    (RESULTS / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "body_kb": a.body_kb, "stream": a.stream,
         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
