"""The real-engine check, scaled down: a gateway over two `local-backend` torch processes (the
tiny model, prefix cache on) sends a shared-prefix workload round-robin and then with
`prefix-load`; the backends' own `vllm:prefix_cache_*` counters must show the hit rate rise,
as the simulator predicts. Hit rates only, never timing (`python -m bench.realengine` measures
TTFT on a quiet machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.realengine.run import (
    SERVED,
    Phase,
    Workload,
    backends,
    drive,
    make_model,
    prefix_counters,
)

# Three documents, each asked twice (seed 3 orders them 1 2 0, then 0 2 1): round-robin over
# two backends alternates, so every second question lands on the backend that has not seen
# its document, while a prefix-aware strategy sends it back. One client at a time: load
# never outweighs a hit.
W = Workload(backends=2, prefixes=3, prefix_tokens=1200, rounds=2, concurrency=1, seed=3)


def _phase(gw: Any, urls: list[str], model: str, first_prefix: int) -> float:
    before = [prefix_counters(u) for u in urls]
    phase = Phase(model)
    asyncio.run(drive(W, gw.url, phase, model=model, first_prefix=first_prefix))
    after = [prefix_counters(u) for u in urls]
    hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    assert queries > 0 and len(phase.ttft_s) == W.prefixes * W.rounds
    return hits / queries


def test_prefix_load_raises_the_hit_rate_real_backends_report(gateway: Any,
                                                              tmp_path: Path) -> None:
    make_model(W, tmp_path)
    with backends(W, tmp_path) as urls:
        deployments = [{"provider": f"b{i}", "model": SERVED, "name": f"b{i}"}
                       for i in range(len(urls))]
        gw = gateway({
            "ledger": {"url": f"sqlite:///{tmp_path}/ledger.db",
                       "spill_path": str(tmp_path / "spill.jsonl")},
            "router": {"seed": 1, "health_check_interval_s": 1},
            "providers": {f"b{i}": {"kind": "vllm", "base_url": f"{u}/v1"}
                          for i, u in enumerate(urls)},
            "models": {"rr": {"strategy": "weighted", "deployments": deployments},
                       "pl": {"strategy": "prefix-load", "deployments": deployments}}})
        round_robin = _phase(gw, urls, "rr", 0)
        # Documents of its own: the first phase's cache entries are no help.
        prefix_load = _phase(gw, urls, "pl", 100)
    # Round-robin: the second round misses everywhere but the chat template's first tokens.
    assert round_robin < 0.1, round_robin
    # prefix-load: every second question is served where its document is (close to half the
    # tokens, the first round being cold).
    assert prefix_load > 0.4, prefix_load
