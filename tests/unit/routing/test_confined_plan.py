"""A call flow control confines to some deployments (`Call.deployments`, gateway/flow/confine.py):
the strategy orders those, the rest of the model's follow as fallbacks only; other models of
the plan and unconfined calls are untouched."""

from __future__ import annotations

from gateway.call import Call
from gateway.policy.models import CircuitBreaker, Policy
from gateway.routing.health import Health
from gateway.routing.plan import Router


def _router() -> Router:
    providers = {n: {"kind": "vllm", "base_url": f"http://{n}:8000/v1"} for n in "abcd"}
    return Router(Policy.model_validate({"providers": providers, "models": {
        "m": {"deployments": [{"provider": n, "model": "x"} for n in "abcd"],
              "fallbacks": ["f"], "strategy": "least-busy"},
        "f": {"deployments": [{"provider": n, "model": "y"} for n in "ab"]}}}),
        Health(CircuitBreaker()))


def _call(only: frozenset[str] | None) -> Call:
    return Call(endpoint="chat", model="m", body={"messages": []}, raw=b"", stream=False,
                request_id="r", deployments=only)


def test_the_confined_deployments_come_first_and_the_rest_stay_fallbacks() -> None:
    router = _router()
    ids = [t.id for t in router.plan(_call(frozenset({"c/x", "d/x"}))).attempts]
    assert set(ids[:2]) == {"c/x", "d/x"}
    assert ids[2:4] == ["a/x", "b/x"]  # the others in policy order
    assert set(ids[4:]) == {"a/y", "b/y"}  # the fallback model: all of it


def test_a_single_confined_deployment_and_an_unconfined_call() -> None:
    router = _router()
    ids = [t.id for t in router.plan(_call(frozenset({"b/x"}))).attempts]
    assert ids[:4] == ["b/x", "a/x", "c/x", "d/x"]
    assert len([t for t in router.plan(_call(None)).attempts if t.public_model == "m"]) == 4
    # Nothing of the model left in the set (all went down): the whole model, as unconfined.
    ids = [t.id for t in router.plan(_call(frozenset({"z/x"}))).attempts]
    assert set(ids[:4]) == {"a/x", "b/x", "c/x", "d/x"}
