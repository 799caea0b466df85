"""The strategy a model gets when its policy names none: `prefix-load` for self-hosted pools,
`weighted` otherwise, and whatever the policy names always."""

from __future__ import annotations

from gateway.policy.models import Policy
from gateway.routing.defaults import strategy_for


def _policy(kinds: dict[str, str], **route: object) -> Policy:
    providers = {name: {"kind": kind, "base_url": f"http://{name}:8000/v1"}
                 for name, kind in kinds.items()}
    return Policy.model_validate({"providers": providers, "models": {"m": {
        "deployments": [{"provider": n, "model": "x"} for n in kinds], **route}}})


def test_a_self_hosted_pool_defaults_to_prefix_load() -> None:
    p = _policy({"a": "vllm", "b": "vllm"})
    assert strategy_for(p, p.models["m"]) == "prefix-load"


def test_a_pool_with_an_external_provider_keeps_weighted() -> None:
    p = _policy({"a": "vllm", "b": "openai-compatible"})
    assert strategy_for(p, p.models["m"]) == "weighted"


def test_a_named_strategy_always_wins() -> None:
    p = _policy({"a": "vllm", "b": "vllm"}, strategy="weighted")
    assert strategy_for(p, p.models["m"]) == "weighted"
    p = _policy({"a": "openai-compatible"}, strategy="least-busy")
    assert strategy_for(p, p.models["m"]) == "least-busy"


def test_the_router_builds_the_default_and_applies_the_session_key() -> None:
    from gateway.policy.models import CircuitBreaker
    from gateway.routing.affinity import SessionKeyed
    from gateway.routing.health import Health
    from gateway.routing.plan import Router
    from gateway.routing.strategies.prefix_load import PrefixLoad
    from gateway.routing.strategies.weighted import WeightedRoundRobin

    p = _policy({"a": "vllm", "b": "vllm"})
    assert isinstance(Router(p, Health(CircuitBreaker()))._strategies["m"], PrefixLoad)
    p = _policy({"a": "openai-compatible", "b": "vllm"}, session_key="user")
    s = Router(p, Health(CircuitBreaker()))._strategies["m"]
    assert isinstance(s, SessionKeyed) and isinstance(s._inner, WeightedRoundRobin)
