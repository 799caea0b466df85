"""`python -m bench.flow_overhead`: CPU time flow control adds to a request that is admitted at
once (the pool below its limit) — one `Pool.acquire` and one `Pool.release`, with metrics on,
over an 8-deployment pool with fresh scraped gauges. Process CPU time, not wall time, so other
work on the machine moves it little; the figure is per request, both calls together."""

from __future__ import annotations

import argparse
import asyncio
import time

from prometheus_client import CollectorRegistry

from gateway.flow.metrics import FlowMetrics
from gateway.flow.pool import Pool
from gateway.policy.flow import FlowControl
from gateway.routing.base import EndpointLoad, Signals


async def _run(n: int) -> float:
    ids = [f"gpu-{i}" for i in range(8)]
    snap = Signals(loads={d: EndpointLoad(waiting=1, kv_cache_usage=0.5) for d in ids})
    pool = Pool("llama", FlowMetrics(CollectorRegistry()))
    pool.configure(FlowControl(max_waiting=8, max_kv_cache_usage=0.95), ids, lambda: snap,
                   lambda _d: 0.0)
    for _ in range(1000):  # warm: label children, caches
        await pool.acquire("acme", 0, 1.0, None)
        pool.release("acme")
    t0 = time.process_time()
    for _ in range(n):
        await pool.acquire("acme", 0, 1.0, None)
        pool.release("acme")
    return (time.process_time() - t0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.flow_overhead")
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args(argv)
    per = asyncio.run(_run(args.requests))
    print(f"flow control, admitted at once: {per * 1e6:.2f} µs CPU per request "
          f"({args.requests} requests)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
