"""`python -m bench.routing_decision`: time one routing decision (`Strategy.order`) for 16
endpoints with a warm prefix index, per strategy, and print p50/p99 in µs.

Not a test (no timed assertions in the suite): run it on a quiet machine. Prompts are a
multi-turn chat (1.5k-token system prompt, three turns: ~2.5k tokens) and, separately, a
single-turn RAG prompt of 6k tokens; the characters-per-token ratio is 4.
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from gateway.call import Call
from gateway.policy.models import Deployment
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals
from gateway.routing.registry import make_strategy

_WORDS = ("router", "latency", "invoice", "refund", "kernel", "tensor", "policy", "token")


def _text(rng: random.Random, tokens: int) -> str:
    out: list[str] = []
    n = 0
    while n < tokens * 4:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def _calls(kind: str, n: int, rng: random.Random) -> list[Call]:
    systems = [_text(rng, 1500) for _ in range(8)]
    docs = [_text(rng, 6000) for _ in range(32)]
    calls = []
    for i in range(n):
        if kind == "chat":
            msgs = [{"role": "system", "content": rng.choice(systems)}]
            for t in range(3):
                msgs.append({"role": "user", "content": f"session {i} turn {t} " +
                             _text(rng, 150)})
                msgs.append({"role": "assistant", "content": _text(rng, 200)})
            msgs.append({"role": "user", "content": _text(rng, 150)})
        else:
            msgs = [{"role": "system", "content": rng.choice(docs)},
                    {"role": "user", "content": f"question {i}: " + _text(rng, 200)}]
        calls.append(Call(endpoint="chat", model="m", raw=b"", stream=True,
                          request_id=str(i), body={"model": "m", "messages": msgs}))
    return calls


def bench(strategy: str, kind: str, endpoints: int, n: int) -> tuple[float, float]:
    rng = random.Random(1)
    targets = [Target("m", Deployment(provider="p", model="m", name=f"gpu-{i}"), "p")
               for i in range(endpoints)]
    signals = Signals(loads={t.id: EndpointLoad(in_flight=rng.randint(0, 8), waiting=rng.randint(
        0, 3), kv_cache_usage=rng.random()) for t in targets})
    calls = _calls(kind, n, rng)
    s = make_strategy(strategy, 1)
    for c in calls:  # warm: the prefix index holds every prompt's chunks
        s.order(targets, signals, c)
    times = []
    gc.disable()
    try:
        for c in calls:
            t0 = time.perf_counter_ns()
            s.order(targets, signals, c)
            times.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    times.sort()
    return times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routing_decision", description=__doc__)
    ap.add_argument("--endpoints", type=int, default=16)
    ap.add_argument("-n", type=int, default=3000, help="decisions timed per row")
    ap.add_argument("--strategies", default="weighted,least-busy,prefix-affinity,prefix-load")
    args = ap.parse_args(argv)
    print(f"{'strategy':<16} {'prompt':<6} {'p50 µs':>8} {'p99 µs':>8}  ({args.endpoints} "
          "endpoints)")
    for name in args.strategies.split(","):
        for kind in ("chat", "rag"):
            p50, p99 = bench(name, kind, args.endpoints, args.n)
            print(f"{name:<16} {kind:<6} {p50:>8.1f} {p99:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
