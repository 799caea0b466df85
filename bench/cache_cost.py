"""`python -m bench.cache_cost`: what the response cache costs and saves, at c=1.

Two measurements:

1. **In process** — the cache stage's own work per request on the overhead benchmark's chat
   request: `stages.begin` + `before()` (a lookup that misses) + `reply()` (the store), with
   the memory backend, against a policy without stages (where the proxy calls nothing:
   `rt.stages` is empty). Median and p99 in µs; resolves what an end-to-end run cannot.
2. **End to end** — the overhead benchmark's nginx mock (`bench/overhead/mock_nginx.py`, a
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


def _policy(cache: bool) -> Policy:
    return Policy.model_validate({
        "providers": {"up": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"bench-model": {"deployments": [{"provider": "up", "model": "bench-model"}]}},
        **({"cache": {"max_entries": 1_000_000}} if cache else {})})


async def _in_process(cache: bool, n: int) -> list[float]:
    policy = _policy(cache)
    rt: Any = SimpleNamespace(policy=policy)
    rt.stages = build_stages(policy, rt)
    principal = Principal("default", "anonymous")
    target = Target("bench-model", policy.models["bench-model"].deployments[0], "up")
    out = []
    for i in range(n):
        # A distinct prompt per request: every lookup misses and every reply is stored.
        body = {"model": "bench-model", "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{PROMPT} {i}"}]}
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
                for _name, run in stages.runs:
                    await run.before()
                await stages.reply(REPLY, target, False)
        out.append(time.perf_counter() - t0)
    return out


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


def _gateway(tmp: Path, mock_port: int, cache: bool) -> tuple[int, subprocess.Popen[bytes]]:
    port = _free_port()
    d = tmp / ("cached" if cache else "plain")
    d.mkdir()
    (d / "policy.yaml").write_text(yaml.safe_dump({
        "ledger": {"url": f"sqlite:///{d}/ledger.db", "spill_path": str(d / "spill.jsonl")},
        "observability": {"log_requests": False},
        **({"cache": {"ttl_s": 3600}} if cache else {}),
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


def _end_to_end(n: int) -> dict[str, list[float]]:
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
        _wait(bare_port, "/")
        _wait(plain_port, "/health")
        _wait(cached_port, "/health")
        body = json.dumps({"model": "bench-model", "temperature": 0, "max_tokens": 16,
                           "messages": [{"role": "user", "content": PROMPT}]}).encode()
        path = "/v1/chat/completions"
        for port, h in ((mock_port, {}), (bare_port, {}), (plain_port, {}),
                        (cached_port, {"Cache-Control": "no-cache"})):
            _timed(port, path, body, 200, h)  # warm up every path
        return {
            "direct": _timed(mock_port, path, body, n, {}),
            "bare pass-through": _timed(bare_port, path, body, n, {}),
            "gateway, no cache": _timed(plain_port, path, body, n, {}),
            "gateway miss (no-cache)": _timed(cached_port, path, body, n,
                                              {"Cache-Control": "no-cache"}),
            "gateway hit": _timed(cached_port, path, body, n, {}),
        }
    finally:
        for p in procs:  # only the processes started here
            p.terminate()
            p.wait(10)


def _fmt(xs: list[float], scale: float) -> str:
    xs = sorted(xs)
    return (f"p50 {statistics.median(xs) * scale:8.1f}   "
            f"p99 {xs[int(len(xs) * 0.99)] * scale:8.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000, help="in-process, per case")
    p.add_argument("--http-requests", type=int, default=2_000, help="end to end, per case")
    a = p.parse_args()
    gc.freeze()
    print("in process, µs per request (the cache stage's seam work):")
    for label, cache in (("no stages", False), ("cache miss + store", True)):
        print(f"  {label:24} {_fmt(asyncio.run(_in_process(cache, a.requests)), 1e6)}")
    print("end to end at c=1, ms per request:")
    for label, xs in _end_to_end(a.http_requests).items():
        print(f"  {label:24} {_fmt(xs, 1e3)}")


if __name__ == "__main__":
    main()
