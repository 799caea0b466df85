"""The overhead benchmark's stage targets measure the path they are named after.

The benchmark's chat body sets no `temperature` or `seed`; under the cache's default rule
(`deterministic_only`) every such request is a bypass, and the "cache hit" target once
measured bypasses. Here the target's policy sections and headers, with the very body the load
sends, must reach the cache's lookup (`hit` target) or its `no-cache` miss path."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from bench.overhead.targets import STAGE_CACHE, STAGE_HEADERS, STAGE_SECTIONS
from bench.overhead.wrk import BODY
from gateway.accounting.records import RequestRecord
from gateway.call import Call, Principal
from gateway.policy.models import Policy
from gateway.stages.cache import HEADER, CacheRun
from gateway.stages.pipeline import begin
from gateway.stages.registry import build_stages


def _runs(stages: str) -> tuple[list[Any], dict[str, str]]:
    policy = Policy.model_validate({
        "providers": {"up": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"bench-model": {"deployments": [{"provider": "up", "model": "bench-model"}]}},
        **STAGE_SECTIONS[stages]})
    rt: Any = SimpleNamespace(policy=policy)
    rt.stages = build_stages(policy, rt)
    body = json.loads(BODY)
    headers = {k.lower(): v for k, v in STAGE_HEADERS.get(stages, {}).items()}
    call = Call(endpoint="chat", model="bench-model", body=body, raw=BODY.encode(),
                stream=False, request_id="r", headers=headers)
    record = RequestRecord("r", datetime.now(UTC), "default", "anonymous", "bench-model",
                           "chat", False, 500, 0.0)
    run = begin(rt, call, Principal("default", "anonymous"), record)
    assert run is not None
    return [r for _n, r in run.runs], run.headers


@pytest.mark.parametrize("stages", sorted(STAGE_CACHE))
def test_the_benchmark_body_reaches_the_cache_path_the_target_names(stages: str) -> None:
    runs, headers = _runs(stages)
    cache = [r for r in runs if isinstance(r, CacheRun)]
    assert len(cache) == 1, f"{stages}: the cache stands aside ({headers})"
    asyncio.run(cache[0].before())
    # Before anything was stored, a lookup misses; `no-cache` asks afresh (`bypass`, stored).
    assert headers[HEADER] == ("miss" if STAGE_CACHE[stages] == "hit" else "bypass")
    assert cache[0].lookup is (STAGE_CACHE[stages] == "hit")
