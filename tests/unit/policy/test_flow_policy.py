"""`flow_control:` and the tenants' `priority`/`weight`: bounds and names are checked where
they are written, and the defaults are what docs/routing.md says."""

from __future__ import annotations

import yaml

from gateway.policy.load import check_policy

BASE = {
    "providers": {"gpu": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"llama": {"deployments": [{"provider": "gpu", "model": "l"}]}},
}


def _errors(**extra: object) -> list[tuple[str, str]]:
    check = check_policy(yaml.safe_dump({**BASE, **extra}), "p.yaml", {})
    return [(e.path, e.message) for e in check.errors]


def test_a_flow_section_with_tenant_classes_loads_with_its_defaults() -> None:
    check = check_policy(yaml.safe_dump({
        **BASE, "flow_control": {"max_in_flight_per_deployment": 8},
        "tenants": {"a": {"priority": 5, "weight": 2.5}, "b": {}}}), "p.yaml", {})
    assert check.errors == []
    policy = check.policy
    assert policy is not None and policy.flow_control is not None
    assert policy.flow_control.queue_timeout_s == 30 and policy.flow_control.headroom == 0.5
    assert (policy.tenants["a"].priority, policy.tenants["a"].weight) == (5, 2.5)
    assert (policy.tenants["b"].priority, policy.tenants["b"].weight) == (0, 1.0)


def test_bad_values_name_their_path() -> None:
    errors = _errors(flow_control={"queue_timeout_s": 0, "headroom": 1.5, "typo": 1},
                     tenants={"a": {"weight": 0, "priority": 5000}})
    paths = {p for p, _ in errors}
    assert {"flow_control.queue_timeout_s", "flow_control.headroom", "flow_control.typo",
            "tenants.a.weight", "tenants.a.priority"} <= paths, errors


def test_an_unknown_model_under_flow_control_is_reported_with_a_suggestion() -> None:
    errors = _errors(flow_control={"models": ["lama"]})
    assert errors == [("flow_control.models[0]", errors[0][1])]
    assert "lama" in errors[0][1] and "llama" in errors[0][1]


def test_single_use_backends_is_a_share_of_the_pool_and_off_by_default() -> None:
    check = check_policy(yaml.safe_dump({**BASE, "flow_control": {}}), "p.yaml", {})
    assert check.policy is not None and check.policy.flow_control is not None
    assert check.policy.flow_control.single_use_backends is None
    for bad in (0, 1, 2):
        assert [p for p, _ in _errors(flow_control={"single_use_backends": bad})] == [
            "flow_control.single_use_backends"], bad
    assert _errors(flow_control={"single_use_backends": 0.25}) == []
