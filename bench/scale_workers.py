"""Throughput of `gateway serve --workers N` against N = 1, on the same machine, same mock.

    .venv/bin/python bench/scale_workers.py --workers 1,2 --rounds 3 --seconds 8

The gateway runs the tenants configuration with Redis limits (what `--workers > 1` needs) and
the SQLite ledger; N = 1 is pinned to core 1, N = 2 gets cores 0 and 1. wrk (c=64) and nginx
run on core 0, so on a two-core machine the two workers share a core with the load: the
ratio measured there is a floor for what a machine with spare cores gets. Rounds alternate
N = 1 and N = 2 so that other processes' load falls on both; the CPU that other processes used
meanwhile is reported with each round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import runner, wrk
from bench.overhead.__main__ import redis_cleanup
from bench.overhead.procs import (
    Background,
    Proc,
    Procs,
    free_port,
    pin_self,
    wait_answering,
)
from bench.overhead.targets import BENCH_KEY, ROOT, Env, gateway_policy

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    a = p.parse_args()
    counts = [int(x) for x in a.workers.split(",")]
    pin_self()
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    procs = Procs(workdir)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    try:
        ups = runner.start_mocks(procs, runner.Plan(), workdir, shutil.which("nginx") or "nginx")
        env = Env(procs, workdir, ups, REDIS_URL, prefix)
        urls: dict[int, tuple[str, Path]] = {}
        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
        for n in counts:
            port = free_port()
            tmp = workdir / f"w{n}"
            tmp.mkdir()
            path = tmp / "policy.yaml"
            path.write_text(yaml.safe_dump(gateway_policy(env, port, tenants=True, redis=True,
                                                          tmp=tmp), sort_keys=False))
            cores = "1" if n == 1 else "0,1"
            proc = subprocess.Popen(
                ["taskset", "-c", cores, sys.executable, "-m", "gateway", "serve", "--config",
                 str(path), "--port", str(port), "--workers", str(n)],
                cwd=tmp, stdout=(tmp / "log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
            procs.running.append(Proc(f"gateway-w{n}", proc, tmp / "log"))
            body = wrk.BODY.encode()
            wait_answering(procs.running[-1], port, "/v1/chat/completions", body, headers, 60)
            script = wrk.write_script(tmp / "wrk.lua", wrk.BODY, headers)
            urls[n] = (f"http://127.0.0.1:{port}/v1/chat/completions", script)
            wrk.run(urls[n][0], script, connections=64, seconds=2)  # warm-up
        for i in range(a.rounds):
            for n in counts:
                bg = Background()
                res = wrk.run(urls[n][0], urls[n][1], connections=64, seconds=a.seconds)
                runs[n].append({"rps": round(res["rps"]), "bg_cpu_pct": round(bg.cpu_pct(), 1)})
                print(f"round {i + 1} workers={n}: {res['rps']:.0f} req/s "
                      f"(others' CPU {runs[n][-1]['bg_cpu_pct']} %)", file=sys.stderr)
    finally:
        procs.stop_all()
        redis_cleanup(prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(r["rps"] for r in runs[counts[0]])
    print("| workers | req/s at c=64: median (min – max) | vs 1 worker | others' CPU % |")
    print("|---|---|---|---|")
    for n in counts:
        rps = [r["rps"] for r in runs[n]]
        med = statistics.median(rps)
        bgs = [r["bg_cpu_pct"] for r in runs[n]]
        print(f"| {n} | {med:,.0f} ({min(rps):,.0f} – {max(rps):,.0f}) | {med / base:.2f}× "
              f"| {min(bgs):g}–{max(bgs):g} |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps({"runs": runs, "seconds": a.seconds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
