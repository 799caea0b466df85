"""`python -m bench.metrics_cost`: CPU and allocations of the metrics one settled request adds
(`RequestMetrics.observe`: GenAI histograms, per-deployment series, tokens/s window), per
request shape, with OTLP off (the default) and on (the export thread reads the same
histograms, so "on" should cost the request nothing more). Also the tokens and cost
counters the settle path already had, for scale.

Not a test (no timed assertions in the suite): run it on a quiet machine, or with
`--instructions` (callgrind's instruction count per request, which load cannot move).
Allocations are counted with tracemalloc over 10,000 requests after warm-up: blocks still
allocated at the end, i.e. what grows per request (a per-request allocation that is freed
again shows as CPU, not here).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.observability.metrics import Metrics
from gateway.observability.request_metrics import RequestMetrics
from gateway.policy.load import parse_policy
from gateway.policy.models import Policy

POLICY = """
observability: {otlp_metrics: %s}
providers:
  gpu-a: {kind: vllm, base_url: "http://vllm-a:8000/v1"}
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "sk-x"}
models:
  llama:
    deployments: [{provider: gpu-a, model: llama-3.1-8b}]
    fallbacks: [gpt-4o-mini]
  gpt-4o-mini:
    deployments: [{provider: openai, model: gpt-4o-mini}]
"""


def records() -> dict[str, RequestRecord]:
    now = datetime.now(UTC)
    usage = Usage(input_uncached=900, cache_read=100, output=200)
    ok = AttemptRecord("gpu-a/llama-3.1-8b", "gpu-a", "llama-3.1-8b", "ok", 200, usage, 900.0)
    failed = AttemptRecord("gpu-a/llama-3.1-8b", "gpu-a", "llama-3.1-8b", "error", 503, None,
                           20.0, error="HTTP 503: overloaded")
    fb = AttemptRecord("openai/gpt-4o-mini", "openai", "gpt-4o-mini", "ok", 200, usage, 700.0)
    return {
        "reply": RequestRecord("r", now, "acme", "k", "llama", "chat", False, 200, 910.0,
                               None, None, [ok]),
        "stream": RequestRecord("r", now, "acme", "k", "llama", "chat", True, 200, 910.0,
                                120.0, None, [ok]),
        "fallback stream": RequestRecord("r", now, "acme", "k", "llama", "chat", True, 200,
                                         730.0, 90.0, None, [failed, fb]),
    }


class _Discard:
    """Stands in for the OTLP exporter: export happens on its own thread, not per request."""

    def export(self, data: object, timeout_millis: float = 0) -> None:
        pass

    def shutdown(self) -> None:
        pass


def per_call_us(fn: Callable[[], None], n: int) -> float:
    for _ in range(1000):
        fn()
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t0) / n * 1e6
    finally:
        gc.enable()


def growth_blocks(fn: Callable[[], None], n: int = 10_000) -> int:
    for _ in range(1000):
        fn()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(n):
        fn()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.count_diff for s in after.compare_to(before, "filename")
               if "tracemalloc" not in str(s.traceback))


def run_only(shape: str, otlp: bool, count: int) -> None:
    """Warm up, then `count` observations and nothing else (the callgrind runs)."""
    policy = parse_policy(POLICY % ("true" if otlp else "false"), env={})
    rm = RequestMetrics(CollectorRegistry(), exporters=[_Discard()])
    rec = records()[shape]
    for _ in range(1000):
        rm.observe(rec, policy)
    for _ in range(count):
        rm.observe(rec, policy)
    rm.shutdown()


def instructions(count: int = 2000) -> None:
    """Instructions per request under callgrind: a run with `count` more observations minus
    one without, so start-up and warm-up cancel out. A busy machine cannot move this."""
    import re
    import subprocess
    import sys
    import tempfile

    def ir(shape: str, otlp: bool, n: int) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                 sys.executable, "-m", "bench.metrics_cost", "--run", shape,
                 "--otlp", "on" if otlp else "off", "--count", str(n)],
                capture_output=True, text=True, check=True)
        m = re.search(r"Collected : (\d+)", out.stderr)
        assert m, out.stderr[-2000:]
        return int(m.group(1))

    print(f"{'request shape':<18} {'OTLP':<4} {'instructions/request':>21}")
    for otlp in (False, True):
        for shape in records():
            per = (ir(shape, otlp, count) - ir(shape, otlp, 0)) / count
            print(f"{shape:<18} {'on' if otlp else 'off':<4} {per:>21,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under callgrind instead of timing")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--otlp", default="off", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        run_only(args.run, args.otlp == "on", args.count)
        return
    if args.instructions:
        instructions()
        return
    print(f"{'request shape':<18} {'OTLP':<4} {'µs/request':>10} {'blocks kept/10k':>16}")
    for otlp in (False, True):
        policy = parse_policy(POLICY % ("true" if otlp else "false"), env={})
        rm = RequestMetrics(CollectorRegistry(), exporters=[_Discard()])
        for shape, rec in records().items():
            def observe(rec: RequestRecord = rec, rm: RequestMetrics = rm,
                        policy: Policy = policy) -> None:
                rm.observe(rec, policy)
            on = "on" if otlp else "off"
            print(f"{shape:<18} {on:<4} {per_call_us(observe, args.n):>10.2f}"
                  f" {growth_blocks(observe):>16}")
        rm.shutdown()
    m = Metrics()

    def tokens_and_cost() -> None:
        for bucket in ("input_uncached", "cache_read", "output"):
            m.add_tokens("acme", "llama", bucket, 100)
        m.add_cost("acme", "llama", 0.001)

    print(f"{'(tokens + cost, existing)':<23} {per_call_us(tokens_and_cost, args.n):>10.2f}"
          f" {growth_blocks(tokens_and_cost):>16}")


if __name__ == "__main__":
    main()
