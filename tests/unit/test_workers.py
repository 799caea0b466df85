"""Which policies `gateway serve --workers N` refuses, and the way out each refusal names."""

from __future__ import annotations

from typing import Any

from gateway.policy.models import Policy
from gateway.workers import refusal


def _policy(**sections: Any) -> Policy:
    return Policy.model_validate({
        "providers": {"up": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"},
                      **sections.pop("providers", {})},
        "models": {"chat": {"deployments": [{"provider": "up", "model": "m"}]}},
        **sections,
    })


REDIS = {"redis_url": "redis://127.0.0.1:6379/0"}


def test_one_worker_is_never_refused() -> None:
    assert refusal(1, _policy()) is None


def test_several_workers_need_redis_even_in_open_mode() -> None:
    why = refusal(3, _policy())
    assert why is not None
    assert "--workers 3 needs shared state" in why and "state.redis_url" in why
    assert refusal(3, _policy(state=REDIS)) is None


def test_several_workers_cannot_manage_local_backends() -> None:
    why = refusal(2, _policy(state=REDIS, providers={"gpu": {"kind": "local"}}))
    assert why is not None
    assert "`kind: local`" in why and "gpu" in why and "local-backend" in why
