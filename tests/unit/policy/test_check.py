"""`policy check` reports every problem of a file in one run, at the path and line written,
with a suggestion where a name is misspelt; warnings never reject a policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.policy import yaml_data
from gateway.policy.checks import closest
from gateway.policy.load import (
    PolicyError,
    check_policy,
    load_policy,
    parse_policy,
    policy_warnings,
)

# Eighteen mistakes of every kind; the comment on each line is the path reported there.
MANY = """\
server:
  port: ${GW_PORT}                               # server.port
  admin_key: ${GW_ADMIN_KEY}                     # server.admin_key
providers:
  gpu-a: {kind: vllm, base_url: "http://127.0.0.1:9/v1"}
  openai:
    kind: openai
    api_key: ${OPENAI_KEY}                       # providers.openai.api_key
    timeouts: {first_byte: 90, total: 30}        # providers.openai.timeouts
  groq: {kind: opnai-compatible, base_url: "https://api.groq.com/openai/v1"}  # providers.groq
  azure: {kind: azure, base_url: "https://x.openai.azure.com", api_verison: "2024-10-21"}
models:
  llama-3-8b:
    deployments:
      - {provider: gpu-a, model: llama, weight: -1}
      - {provider: gpu-b, model: llama}
    fallback: [gpt-4o-mini]
    strategy: wieghted
  gpt-4o-mini:
    deployments:
      - {provider: opnai, model: gpt-4o-mini}
    fallbacks: [gpt-4o-mni, gpt-4o-mini]
tenants:
  acme:
    models: [llama-3-8b, gpt4o-mini]
    budget: {monthly_usd: "100", alerts: [50, 90]}
    limits: {rpm: 0, tmp: 10}
  globex:
    model_limits: {llama-3-8: {rpm: 5}}
router:
  max_attempts: 3
router:
  max_attempts: 4
"""

EXPECTED = [
    (2, "server.port", "environment variable GW_PORT is not set"),
    (3, "server.admin_key", "environment variable GW_ADMIN_KEY is not set"),
    (8, "providers.openai.api_key", "environment variable OPENAI_KEY is not set"),
    (9, "providers.openai.timeouts", "first_byte (90.0) must not exceed total (30.0)"),
    (10, "providers.groq", "unknown provider kind 'opnai-compatible'; "
                           "did you mean 'openai-compatible'?"),
    (11, "providers.azure.api_verison", "unknown key; did you mean 'api_version'?"),
    (15, "models.llama-3-8b.deployments[0].weight", "greater than or equal to 0 (got -1)"),
    (16, "models.llama-3-8b.deployments[1].provider", "unknown provider 'gpu-b'; "
                                                      "did you mean 'gpu-a'?"),
    (17, "models.llama-3-8b.fallback", "unknown key; did you mean 'fallbacks'?"),
    (18, "models.llama-3-8b.strategy", "(got 'wieghted'); did you mean 'weighted'?"),
    (21, "models.gpt-4o-mini.deployments[0].provider", "unknown provider 'opnai'; "
                                                       "did you mean 'openai'?"),
    (22, "models.gpt-4o-mini.fallbacks[0]", "unknown model 'gpt-4o-mni'; "
                                            "did you mean 'gpt-4o-mini'?"),
    (22, "models.gpt-4o-mini.fallbacks[1]", "a model cannot fall back to itself"),
    (25, "tenants.acme.models[1]", "unknown model 'gpt4o-mini'; did you mean 'gpt-4o-mini'?"),
    (26, "tenants.acme.budget.alerts", "greater than 0 and at most 1 (got 50)"),
    (27, "tenants.acme.limits.rpm", "greater than or equal to 1 (got 0)"),
    (27, "tenants.acme.limits.tmp", "unknown key; did you mean 'tpm'?"),
    (29, "tenants.globex.model_limits.llama-3-8", "unknown model 'llama-3-8'; "
                                                  "did you mean 'llama-3-8b'?"),
    (32, "router", "duplicate key 'router' (first at line 30)"),
]


def test_every_kind_of_mistake_is_reported_in_one_run() -> None:
    check = check_policy(MANY, "p.yaml", {})
    assert check.policy is None
    got = [(i.line, i.path, i.message) for i in check.errors]
    assert [(line, path) for line, path, _ in got] == [(line, path) for line, path, _ in EXPECTED]
    for (_, _, message), (_, _, part) in zip(got, EXPECTED, strict=True):
        assert part in message
    # The empty value a missing variable left is not reported a second time (as "should be a
    # valid integer" for server.port).
    assert not any("valid integer" in m for _, _, m in got)
    with pytest.raises(PolicyError) as info:
        parse_policy(MANY, "p.yaml", {})
    assert len(info.value.issues) == len(EXPECTED)


def test_policy_check_prints_every_problem_and_their_count(tmp_path: Path) -> None:
    bad = tmp_path / "many.yaml"
    bad.write_text(MANY)
    r = subprocess.run([sys.executable, "-m", "gateway", "policy", "check", str(bad)],
                       capture_output=True, text=True, env={"PATH": ""})
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[-1] == f"{bad}: {len(EXPECTED)} error(s)"
    assert [ln.split(": ")[1] for ln in lines[:-1]] == [path for _, path, _ in EXPECTED]
    assert "Traceback" not in r.stderr


def test_a_repeated_section_is_an_error_at_the_second_key() -> None:
    text = ("providers:\n  a: {kind: vllm, base_url: 'http://h:1/v1'}\n"
            "models: {}\n"
            "providers:\n  b: {kind: vllm, base_url: 'http://h:2/v1'}\n")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml", {})
    [dup] = info.value.issues
    assert dup.render("p.yaml") == ("p.yaml:4: providers: duplicate key 'providers' (first at "
                                    "line 1); YAML keeps only the last one, so merge the two")


def test_a_repeated_key_deep_inside_is_reported_with_its_path() -> None:
    text = ("providers:\n  a:\n    kind: vllm\n    base_url: 'http://h:1/v1'\n"
            "    kind: openai\n")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml", {})
    assert [(i.line, i.path) for i in info.value.issues] == [(5, "providers.a.kind")]


def test_merge_keys_may_override_what_they_merge() -> None:
    # An explicit key beside `<<: *anchor` overrides the merged one: no duplicate.
    text = """
providers:
  a: &gpu {kind: vllm, base_url: "http://h:1/v1", max_connections: 8}
  b:
    <<: *gpu
    max_connections: 16
"""
    p = parse_policy(text, "p.yaml", {})
    assert (p.providers["a"].max_connections, p.providers["b"].max_connections) == (8, 16)
    assert p.providers["b"].base_url == "http://h:1/v1"


@pytest.mark.parametrize("alerts", [[50, 90], [0.5, 1.5], [0], [-0.1]])
def test_budget_alerts_outside_zero_to_one_are_rejected(alerts: list[float]) -> None:
    text = yaml.safe_dump({"tenants": {"acme": {"budget": {"monthly_usd": "10",
                                                           "alerts": alerts}}}})
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml", {})
    [err] = info.value.issues
    assert err.path == "tenants.acme.budget.alerts"
    assert "greater than 0 and at most 1" in err.message and "0.5 for 50 %" in err.message


def test_budget_alerts_at_one_are_accepted() -> None:
    text = yaml.safe_dump({"tenants": {"acme": {"budget": {"monthly_usd": "10",
                                                           "alerts": [0.8, 1]}}}})
    assert parse_policy(text, "p.yaml", {}).tenants["acme"].budget.alerts == [0.8, 1.0]  # type: ignore[union-attr]


def test_provider_timeouts_keep_the_provider_name_even_when_it_is_a_kind() -> None:
    text = """
providers:
  other: {kind: vllm, base_url: "http://h:1/v1"}
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    timeouts:
      connect: -1
      frist_byte: 3
"""
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml", {})
    got = [(i.line, i.path) for i in info.value.issues]
    assert got == [(8, "providers.openai.timeouts.connect"),
                   (9, "providers.openai.timeouts.frist_byte")]
    assert "did you mean 'first_byte'?" in info.value.issues[1].message


def test_suggestions_only_when_one_name_is_clearly_closest() -> None:
    assert closest("fallback", ["fallbacks", "deployments", "strategy"]) == "fallbacks"
    assert closest("GPT-4o", ["gpt-4o", "gpt-4o-mini"]) == "gpt-4o"
    assert closest("gpu-c", ["gpu-a", "gpu-b"]) is None  # equally close: no guess
    assert closest("zzz", ["fallbacks"]) is None


def test_known_names_are_listed_up_to_a_bound() -> None:
    models = {f"m{i:02}": {"deployments": [{"provider": "gpu", "model": "x"}]} for i in range(30)}
    text = yaml.safe_dump({"providers": {"gpu": {"kind": "vllm", "base_url": "http://h:1/v1"}},
                           "models": models, "tenants": {"acme": {"models": ["nope"]}}})
    [err] = check_policy(text, "p.yaml", {}).errors
    assert err.message == ("unknown model 'nope' (known: "
                           + ", ".join(f"m{i:02}" for i in range(20)) + " and 10 more)")


ROUTED = """
providers:
  gpu-a: {kind: vllm, base_url: "http://127.0.0.1:9/v1"}
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: k}
models:
  llama-3-8b:
    deployments: [{provider: gpu-a, model: llama}]
    fallbacks: [gpt-4o-mini]
  long:
    deployments: [{provider: gpu-a, model: llama-128k}]
  gpt-4o-mini:
    deployments: [{provider: openai, model: gpt-4o-mini}]
    context_fallbacks: [long]
tenants:
  acme:
    models: [llama-3-8b]
  globex:
    models: [llama-3-8b, gpt-4o-mini]
  initech: {}
"""


def test_a_fallback_outside_the_tenants_models_is_a_warning_not_an_error() -> None:
    check = check_policy(ROUTED, "p.yaml", {})
    assert check.errors == [] and check.policy is not None
    assert [w.render("p.yaml") for w in check.warnings] == [
        "p.yaml:16: warning: tenants.acme.models[0]: model 'llama-3-8b' falls back to "
        "'gpt-4o-mini' (models.llama-3-8b.fallbacks), which tenant 'acme' may not use, so "
        "acme's requests skip that fallback; add 'gpt-4o-mini' to this list if acme may use it",
        "p.yaml:18: warning: tenants.globex.models[1]: model 'gpt-4o-mini' falls back to "
        "'long' (models.gpt-4o-mini.context_fallbacks), which tenant 'globex' may not use, so "
        "globex's requests skip that fallback; add 'long' to this list if globex may use it",
    ]
    # load_policy still returns the policy, and a loaded policy can list them (serve, reload)
    policy = parse_policy(ROUTED, "p.yaml", {})
    assert [(w.path, w.line) for w in policy_warnings(policy)] == [
        ("tenants.acme.models[0]", None), ("tenants.globex.models[1]", None)]


def test_policy_check_exits_zero_with_only_warnings(tmp_path: Path) -> None:
    f = tmp_path / "routed.yaml"
    f.write_text(ROUTED)
    r = subprocess.run([sys.executable, "-m", "gateway", "policy", "check", str(f)],
                       capture_output=True, text=True, env={"PATH": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{f}: OK (2 providers, 3 models, 3 tenants), 2 warning(s)\n"
    assert r.stderr.count(": warning: ") == 2


def test_a_rejected_policy_carries_its_warnings_apart_from_its_errors() -> None:
    text = ROUTED.replace("initech: {}", "initech: {models: [nope]}")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml", {})
    assert [i.path for i in info.value.issues] == ["tenants.initech.models[0]"]
    assert len(info.value.warnings) == 2


def test_the_file_is_parsed_by_libyaml_when_it_is_there() -> None:
    if not yaml.__with_libyaml__:  # pragma: no cover - PyYAML built without libyaml
        pytest.skip("PyYAML without libyaml")
    assert yaml_data.Loader is yaml.CSafeLoader


def test_an_unreadable_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "missing.yaml")
    [err] = info.value.issues
    assert "cannot read the policy" in err.message


def test_a_missing_variable_in_kind_is_reported_once_and_a_bad_kind_still_is() -> None:
    text = """
providers:
  a: {kind: "${KIND}", base_url: "http://h:1/v1"}
  b: {kind: vlm, base_url: "http://h:2/v1", api_key: "${B_KEY}"}
"""
    check = check_policy(text, "p.yaml", {})
    assert [(i.line, i.path, i.message.split(";")[0]) for i in check.errors] == [
        (3, "providers.a.kind", "environment variable KIND is not set"),
        (4, "providers.b.api_key", "environment variable B_KEY is not set"),
        (4, "providers.b", "unknown provider kind 'vlm'"),
    ]
