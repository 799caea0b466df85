"""`python -m bench.guards_cost`: what one request's guard stage costs on the request path, in
process (the end-to-end run cannot resolve a few µs on a busy machine), three ways.

For the overhead benchmark's chat request (and a 4 KiB prompt) it runs the stage seam's work
per request — `stages.begin`, `before()`, `attempt()` for an external target — with one regex
input guard, against the same policy without guards (where the proxy makes no call at all:
`rt.stages` is empty):

- wall time: the median and p99 in µs over rounds of `-n` requests (noise under load);
- CPU time: the process's CPU seconds over the same rounds, per request (`--cpu`);
- instructions, which other processes cannot move: run one configuration per process under
  callgrind and subtract (the loop and the process start are the same in both):

      for w in none guard; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$w \
          .venv/bin/python -m bench.guards_cost --only $w --prompt bench -n 5000 --rounds 1
      done
      # added per request = (summary of cg.guard − summary of cg.none) / 5000
      grep -h '^summary' /tmp/cg.none /tmp/cg.guard

End to end, what a client sees (p50 at concurrency 1, no guard against one regex guard, same
mocks, round-robin): on a quiet machine,

      bench/overhead/run.sh --targets direct,bare-aiohttp,gateway,gateway-guard \
          --scenarios a --repeat 3

(`--seconds 2 --soak-requests 200` for a one-minute smoke run). Not a test (no timed
assertions in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from gateway.accounting.records import RequestRecord
from gateway.call import Call, Principal
from gateway.guards.stage import build_guard_stages
from gateway.policy.models import Policy
from gateway.providers.base import Target
from gateway.stages.pipeline import begin

GUARD = {"order-ids": {"detector": {"kind": "regex", "patterns": [r"ORD-\d{6}-[A-Z]{2}\b"]}}}
# The overhead benchmark's request (bench/overhead/wrk.py).
PROMPT = "Say hello in one short sentence."


def _policy(guards: dict[str, Any]) -> Policy:
    return Policy.model_validate({
        "providers": {"ext": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"bench-model": {"deployments": [{"provider": "ext", "model": "bench-model"}]}},
        "guards": guards})


def _call(prompt: str) -> Call:
    body = {"model": "bench-model", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 16}
    return Call(endpoint="chat", model="bench-model", body=body,
                raw=json.dumps(body).encode(), stream=False, request_id="r")


async def _round(policy: Policy, prompt: str, n: int) -> list[float]:
    rt: Any = SimpleNamespace(policy=policy, stages=())
    rt.stages = tuple(build_guard_stages(policy, rt))
    principal = Principal("default", "anonymous")
    deployment = policy.models["bench-model"].deployments[0]
    target = Target("bench-model", deployment, "ext")
    out = []
    for _ in range(n):
        call = _call(prompt)
        record = RequestRecord("r", datetime.now(UTC), "default", "anonymous", "bench-model",
                               "chat", False, 500, 0.0)
        t0 = time.perf_counter()
        stages = begin(rt, call, principal, record) if rt.stages else None
        if stages is not None:
            await stages.before(None, None, None, t0, None)  # type: ignore[arg-type]
            await stages.attempt(target)
        out.append(time.perf_counter() - t0)
    return out


CONFIGS = {"none": {}, "guard": GUARD}
NAMES = {"none": "no guards", "guard": "one regex input guard"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--only", choices=sorted(CONFIGS), help="one configuration (callgrind)")
    p.add_argument("--prompt", choices=["bench", "4k"], help="one prompt (callgrind)")
    p.add_argument("--cpu", action="store_true", help="also CPU time per request")
    args = p.parse_args()
    prompts = {"bench": ("bench prompt", PROMPT), "4k": ("4 KiB prompt", (PROMPT + " ") * 128)}
    for key, (label, prompt) in prompts.items():
        if args.prompt and key != args.prompt:
            continue
        for which, guards in CONFIGS.items():
            if args.only and which != args.only:
                continue
            policy = _policy(guards)
            medians, p99s, cpus = [], [], []
            for _ in range(args.rounds):
                gc.collect()
                c0 = time.process_time()
                xs = sorted(asyncio.run(_round(policy, prompt, args.n)))
                cpus.append((time.process_time() - c0) / args.n * 1e6)
                medians.append(xs[len(xs) // 2] * 1e6)
                p99s.append(xs[int(len(xs) * 0.99)] * 1e6)
            cpu = f", CPU {statistics.median(cpus):6.2f} µs/request (whole loop)" \
                if args.cpu else ""
            print(f"{label:13} {NAMES[which]:22} median {statistics.median(medians):6.2f} µs "
                  f"(rounds {min(medians):.2f}–{max(medians):.2f}), p99 "
                  f"{statistics.median(p99s):6.2f} µs{cpu}")


if __name__ == "__main__":
    main()
