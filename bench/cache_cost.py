"""`python -m bench.cache_cost`: what the response cache costs and saves, at c=1.

Three measurements:

1. **In process** — the stage seam's own work per request on the overhead benchmark's chat
   request, with the memory backend: `stages.begin` + `before()` + `reply()`, against a policy
   without stages (where the proxy calls nothing: `rt.stages` is empty). Cases: `cache miss +
   store` (a distinct prompt per request), `guard + cache miss` (one regex input guard, the
   issue's budget case), `cache hit` (`before()` answers; the replay's bytes are built).
   "on path" is what the request waits for; "total" adds the store, which runs on the next loop
   turn, after the reply was handed on (`loop.call_soon`). Median and p99 in µs.
2. **Instructions** (`--instructions`) — the same cases under callgrind: instructions per
   request, counters zeroed after a warm-up and dumped after `--requests` requests. The
   measure a shared machine cannot move; compare two versions with `--src DIR` (a directory
   holding another `gateway` package, imported ahead of this one).
3. **End to end** — the overhead benchmark's nginx mock (`bench/overhead/mock_nginx.py`, a
   static chat completion) and two real `gateway serve` processes, one with `cache:` on and one
   without; one keep-alive client sends the same deterministic request sequentially: straight
   to the mock ("direct"), through the bare pass-through (`bench/overhead/bare_passthrough.py`,
   the floor a Python proxy reaches), through the gateway without a cache, through the cached
   one with `Cache-Control: no-cache` (the miss path: key, upstream, store), and answered from
   cache ("hit"). p50 / p99 in ms.

Not a test (no timed assertions in the suite): run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from bench.overhead import mock_nginx
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.call import Call, Principal
from gateway.policy.models import Policy
from gateway.providers.base import Target
from gateway.stages import answer as answer_module
from gateway.stages.pipeline import begin
from gateway.stages.registry import build_stages

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Say hello in one short sentence."  # the overhead benchmark's request
REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "Hello! How can I help you today?"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}).encode()


GUARD = {"order-ids": {"detector": {"kind": "regex", "patterns": [r"ORD-\d{6}-[A-Z]{2}\b"]}}}
CASES = ("no stages", "cache miss + store", "cache miss, path only", "guard + cache miss",
         "cache hit")


def _policy(case: str) -> Policy:
    return Policy.model_validate({
        "providers": {"up": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"bench-model": {"deployments": [{"provider": "up", "model": "bench-model"}]}},
        **({"cache": {"max_entries": 1_000_000}} if case != "no stages" else {}),
        **({"guards": GUARD} if case.startswith("guard") else {})})


async def _in_process(case: str, n: int, between: Any = None) -> tuple[list[float], list[float]]:
    """(on-path, total) seconds per request; `between(i)` runs before request `i` untimed."""
    policy = _policy(case)
    rt: Any = SimpleNamespace(policy=policy)
    rt.stages = build_stages(policy, rt)
    if case == "cache miss, path only":  # what the request waits for: the store never runs
        for stage in rt.stages:
            stage.begin = _no_store(stage.begin)
    principal = Principal("default", "anonymous")
    target = Target("bench-model", policy.models["bench-model"].deployments[0], "up")
    hit = case == "cache hit"
    on_path, total = [], []
    for i in range(n):
        if between is not None:
            between(i)
        # A distinct prompt per request (every lookup misses, every reply is stored), except
        # for hits: one prompt, stored before the first timed request.
        body = {"model": "bench-model", "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "user", "content": PROMPT if hit else f"{PROMPT} {i}"}]}
        call = Call(endpoint="chat", model="bench-model", body=body,
                    raw=json.dumps(body).encode(), stream=False, request_id="r")
        record = RequestRecord("r", datetime.now(UTC), "default", "anonymous", "bench-model",
                               "chat", False, 500, 0.0)
        record.attempts.append(AttemptRecord(target.id, "up", "bench-model", "ok", 200,
                                             Usage(input_uncached=12, output=9), 1.0))
        t0 = time.perf_counter()
        if rt.stages:  # what the proxy does per request
            stages = begin(rt, call, principal, record)
            if stages is not None:
                answer = None
                for _name, run in stages.runs:
                    answer = await run.before()
                    if answer is not None:
                        replay = getattr(answer_module, "replayed", None)  # older trees lack it
                        if replay is not None:
                            replay(answer, call, None)
                        break
                if answer is None:
                    await stages.reply(REPLY, target, False)
        t1 = time.perf_counter()
        await asyncio.sleep(0)  # the loop turn that runs the deferred store
        t2 = time.perf_counter()
        on_path.append(t1 - t0)
        total.append(t2 - t0)
    return on_path, total


def _no_store(begin_run: Any) -> Any:
    def wrapped(ctx: Any) -> Any:
        run = begin_run(ctx)
        if run is not None and hasattr(run, "_soon"):
            run._soon = lambda *args: None
        return run
    return wrapped


def _instructions(n: int, src: str | None) -> None:
    """Re-run this module under callgrind, one case after another in one process."""
    exe = shutil.which("valgrind")
    if exe is None:
        sys.exit("valgrind is missing: apt-get install -y valgrind")
    work = Path(tempfile.mkdtemp(prefix="cache-instr-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, str(ROOT)) if p)}
    subprocess.run([exe, "--tool=callgrind", f"--callgrind-out-file={work}/cg.%p",
                    "--dump-instr=no", "--combine-dumps=no", "-q", sys.executable, "-m",
                    "bench.cache_cost", "--under-callgrind", str(work), "--requests", str(n)],
                   cwd=work, env=env, check=True)  # not ROOT: `-m` puts the cwd first


def _dump_total(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0


def _under_callgrind(work: Path, n: int) -> None:
    import gateway

    print(f"  (gateway from {Path(gateway.__file__).parent})", flush=True)
    pid = os.getpid()

    def control(flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, timeout=300,
                       check=False)

    for case in CASES:
        warm = max(50, n // 5)
        asyncio.run(_in_process(case, warm))  # imports, first-call caches, the hit's entry

        def between(i: int, warm: int = warm) -> None:
            if i == warm:  # the warm-up's requests are done: count from here
                control("-z")

        before = set(work.glob("cg.*"))
        asyncio.run(_in_process(case, warm + n, between))
        control("-d")
        dumps = sorted(set(work.glob("cg.*")) - before)
        ir = sum(_dump_total(d) for d in dumps)
        print(f"  {case:24} {ir / n:12,.0f} instructions per request", flush=True)


def _wait(port: int, path: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not answer")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(port: int, path: str, body: bytes, n: int, headers: dict[str, str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"Content-Type": "application/json", **headers}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", path, body, h)
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - t0)
        assert resp.status == 200, resp.status
    conn.close()
    return out


def _gateway(tmp: Path, mock_port: int, cache: bool,
             guard: bool = False) -> tuple[int, subprocess.Popen[bytes]]:
    port = _free_port()
    d = tmp / ("guarded" if guard else "cached" if cache else "plain")
    d.mkdir()
    (d / "policy.yaml").write_text(yaml.safe_dump({
        "ledger": {"url": f"sqlite:///{d}/ledger.db", "spill_path": str(d / "spill.jsonl")},
        **({"cache": {"ttl_s": 3600}} if cache else {}),
        **({"guards": GUARD} if guard else {}),
        "providers": {"up": {"kind": "openai-compatible",
                             "base_url": f"http://127.0.0.1:{mock_port}/v1"}},
        "models": {"bench-model": {"deployments": [{"provider": "up", "model": "bench-model",
                                                    "pricing": [{"input": "0.15",
                                                                 "output": "0.60"}]}]}}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return port, subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(d / "policy.yaml"),
         "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def _end_to_end(n: int, rounds: int) -> dict[str, list[list[float]]]:
    mock_port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    nginx = tmp / "nginx"
    nginx.mkdir()
    conf = mock_nginx.write_conf(nginx, mock_port)
    procs = [subprocess.Popen(mock_nginx.argv(shutil.which("nginx") or "nginx", conf, nginx))]
    try:
        bare_port = _free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.overhead.bare_passthrough", "--upstream",
             f"http://127.0.0.1:{mock_port}/v1", "--port", str(bare_port)], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        plain_port, plain = _gateway(tmp, mock_port, cache=False)
        procs.append(plain)
        cached_port, cached = _gateway(tmp, mock_port, cache=True)
        procs.append(cached)
        guarded_port, guarded = _gateway(tmp, mock_port, cache=True, guard=True)
        procs.append(guarded)
        _wait(bare_port, "/")
        _wait(plain_port, "/health")
        _wait(cached_port, "/health")
        _wait(guarded_port, "/health")
        body = json.dumps({"model": "bench-model", "temperature": 0, "max_tokens": 16,
                           "messages": [{"role": "user", "content": PROMPT}]}).encode()
        path = "/v1/chat/completions"
        for port, h in ((mock_port, {}), (bare_port, {}), (plain_port, {}),
                        (cached_port, {"Cache-Control": "no-cache"}),
                        (guarded_port, {"Cache-Control": "no-cache"})):
            _timed(port, path, body, 200, h)  # warm up every path
        cases = {
            "direct": (mock_port, {}),
            "bare pass-through": (bare_port, {}),
            "gateway, no cache": (plain_port, {}),
            "gateway miss (no-cache)": (cached_port, {"Cache-Control": "no-cache"}),
            "gateway hit": (cached_port, {}),
            "guard + miss (no-cache)": (guarded_port, {"Cache-Control": "no-cache"}),
        }
        # Rounds interleave the cases, so a drift of the host's speed falls on all of them.
        out: dict[str, list[list[float]]] = {c: [] for c in cases}
        for _ in range(rounds):
            for case, (port, h) in cases.items():
                out[case].append(_timed(port, path, body, max(1, n // rounds), h))
        return out
    finally:
        for p in procs:  # only the processes started here
            p.terminate()
            p.wait(10)


def _fmt(xs: list[float], scale: float, digits: int = 1) -> str:
    xs = sorted(xs)
    return (f"p50 {statistics.median(xs) * scale:8.{digits}f}   "
            f"p99 {xs[int(len(xs) * 0.99)] * scale:8.{digits}f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000, help="in-process, per case")
    p.add_argument("--http-requests", type=int, default=2_000, help="end to end, per case")
    p.add_argument("--rounds", type=int, default=5, help="end to end: interleaved rounds")
    p.add_argument("--instructions", action="store_true",
                   help="instructions per request under callgrind (in process) and stop")
    p.add_argument("--src", help="with --instructions: a directory holding another `gateway`")
    p.add_argument("--in-process-only", action="store_true")
    p.add_argument("--under-callgrind", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.under_callgrind:
        _under_callgrind(Path(a.under_callgrind), a.requests)
        return
    if a.instructions:
        print(f"in process, instructions per request ({a.requests} requests per case):")
        _instructions(a.requests, a.src)
        return
    gc.freeze()
    print("in process, µs per request (the stage seam's work; total adds the deferred store):")
    for case in CASES:
        on_path, total = asyncio.run(_in_process(case, a.requests))
        print(f"  {case:24} on path {_fmt(on_path, 1e6)}   total {_fmt(total, 1e6)}")
    if a.in_process_only:
        return
    print(f"end to end at c=1, ms per request ({a.rounds} interleaved rounds; then, paired "
          "by round, the round's p50 over the bare pass-through's and minus the gateway's "
          "without a cache, median and range):")
    results = _end_to_end(a.http_requests, a.rounds)
    bare = [statistics.median(r) for r in results["bare pass-through"]]
    plain = [statistics.median(r) for r in results["gateway, no cache"]]
    for label, rounds in results.items():
        p50s = [statistics.median(r) for r in rounds]
        ratios = sorted(p / b for p, b in zip(p50s, bare, strict=True))
        added = sorted((p - q) * 1e6 for p, q in zip(p50s, plain, strict=True))
        print(f"  {label:24} {_fmt([x for r in rounds for x in r], 1e3, 3)}   "
              f"× bare {statistics.median(ratios):.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f})   "
              f"vs no cache {statistics.median(added):+6.1f} µs "
              f"({added[0]:+.1f} to {added[-1]:+.1f})")


if __name__ == "__main__":
    main()
