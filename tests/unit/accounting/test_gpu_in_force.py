"""Which deployments a policy has in force (GPU billing), and how `gpu_since` is checked."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.accounting.gpu_lifetimes import InForce, in_force
from gateway.policy.models import Policy


def policy(*routes: list[dict[str, Any]]) -> Policy:
    return Policy.model_validate({
        "providers": {n: {"kind": "vllm", "base_url": f"http://{n}/v1"} for n in ("a", "b")},
        "models": {f"m{i}": {"deployments": r} for i, r in enumerate(routes)},
    })


def test_gpu_deployments_with_weight_are_in_force() -> None:
    gpu = {"provider": "a", "model": "llama", "gpu_cost_per_hour": "2.1"}
    p = policy(
        [gpu, {"provider": "b", "model": "llama", "gpu_cost_per_hour": "1", "weight": 0},
         {"provider": "b", "model": "gpt", "pricing": [{"input": 1}]}],
        # the same deployment drained on one model but routed on another is in force
        [{**gpu, "weight": 0}, {"provider": "b", "model": "x"}],
        [{**gpu, "name": "since", "gpu_since": "2026-03-01T09:00:00+01:00"}],
    )
    assert in_force(p) == {
        "a/llama": InForce("a", Decimal("2.1")),
        "since": InForce("a", Decimal("2.1"), datetime(2026, 3, 1, 8, tzinfo=UTC)),
    }


def test_gpu_since_without_a_rate_is_refused_naming_both_fields() -> None:
    with pytest.raises(ValidationError, match=r"gpu_since .* is set but gpu_cost_per_hour"):
        policy([{"provider": "a", "model": "llama", "gpu_since": "2026-03-01"}])
