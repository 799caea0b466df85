"""`python -m bench.guards_cost`: what one request's guard stage costs on the request path,
timed in process (the end-to-end overhead run cannot resolve a few µs on a busy machine).

For the overhead benchmark's chat request (and a 4 KiB prompt), it times the stage seam's
work per request — `stages.begin`, `before()`, `attempt()` for an external target — with one
regex input guard, against the same policy without guards (where the proxy makes no call at
all: `rt.stages` is empty). Prints the median and p99 in µs over rounds of 20,000 requests.

Not a test (no timed assertions in the suite): run it on a quiet machine.
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-n", type=int, default=20_000)
    args = p.parse_args()
    prompts = {"bench prompt": PROMPT, "4 KiB prompt": (PROMPT + " ") * 128}
    for label, prompt in prompts.items():
        for name, guards in (("no guards", {}), ("one regex input guard", GUARD)):
            policy = _policy(guards)
            medians, p99s = [], []
            for _ in range(args.rounds):
                gc.collect()
                xs = sorted(asyncio.run(_round(policy, prompt, args.n)))
                medians.append(xs[len(xs) // 2] * 1e6)
                p99s.append(xs[int(len(xs) * 0.99)] * 1e6)
            print(f"{label:13} {name:22} median {statistics.median(medians):6.2f} µs "
                  f"(rounds {min(medians):.2f}–{max(medians):.2f}), p99 "
                  f"{statistics.median(p99s):6.2f} µs")


if __name__ == "__main__":
    main()
