"""Policy validation: every error names its YAML path (and line) and says what to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy.load import PolicyError, load_policy, parse_policy

BASE = """
providers:
  gpu-a: {kind: vllm, base_url: "http://127.0.0.1:9/v1"}
  gpu-b: {kind: vllm, base_url: "http://127.0.0.1:9/v1"}
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "${OPENAI_KEY}"}
models:
  chat:
    deployments:
      - {provider: gpu-a, model: llama}
      - {provider: gpu-b, model: llama, weight: 2}
    fallbacks: [big]
  big:
    deployments:
      - {provider: openai, model: gpt-4o}
"""
ENV = {"OPENAI_KEY": "sk-test"}


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml", ENV if env is None else env)
    return [i.render("p.yaml") for i in info.value.issues]


def test_valid_policy_loads_with_env_interpolation() -> None:
    p = parse_policy(BASE, "p.yaml", ENV)
    assert p.providers["openai"].api_key == "sk-test"
    assert [d.weight for d in p.models["chat"].deployments] == [1.0, 2.0]


def test_unknown_provider_names_known_ones_with_path_and_line() -> None:
    text = BASE.replace("{provider: gpu-b, model: llama, weight: 2}",
                        "{provider: gpu-c, model: llama, weight: 2}")
    assert errors(text) == [
        "p.yaml:10: models.chat.deployments[1].provider: unknown provider 'gpu-c' "
        "(known: gpu-a, gpu-b, openai)"
    ]


def test_negative_weight_reports_value() -> None:
    text = BASE.replace("weight: 2", "weight: -5")
    (msg,) = errors(text)
    assert msg.startswith("p.yaml:10: models.chat.deployments[1].weight: ")
    assert "greater than or equal to 0" in msg and "(got -5)" in msg


def test_unset_env_var_is_named() -> None:
    (msg,) = errors(BASE, env={})
    assert "providers.openai.api_key" in msg
    assert "environment variable OPENAI_KEY is not set" in msg


def test_optional_default_syntax_and_optional_provider_dropped() -> None:
    text = BASE.replace('api_key: "${OPENAI_KEY}"}', 'api_key: "${OPENAI_KEY:-}", optional: true}')
    p = parse_policy(text, "p.yaml", {})
    assert "openai" not in p.providers
    assert "big" not in p.models
    assert p.models["chat"].fallbacks == []


def test_typo_in_key_is_rejected() -> None:
    text = BASE.replace("fallbacks: [big]", "fallback: [big]")
    (msg,) = errors(text)
    assert "models.chat.fallback: unknown key" in msg


def test_unknown_provider_kind_is_one_error() -> None:
    text = BASE.replace("gpu-a: {kind: vllm", "gpu-a: {kind: vlm")
    (msg,) = errors(text)
    assert "providers.gpu-a: unknown provider kind 'vlm'" in msg


def test_unknown_fallback_model_and_self_fallback() -> None:
    text = BASE.replace("fallbacks: [big]", "fallbacks: [huge, chat]")
    msgs = errors(text)
    assert any("models.chat.fallbacks[0]: unknown model 'huge' (known: big, chat)" in m
               for m in msgs)
    assert any("models.chat.fallbacks[1]: a model cannot fall back to itself" in m for m in msgs)


def test_all_weights_zero_is_an_error() -> None:
    text = BASE.replace("{provider: gpu-a, model: llama}",
                        "{provider: gpu-a, model: llama, weight: 0}")
    text = text.replace("weight: 2", "weight: 0")
    (msg,) = errors(text)
    assert "every deployment has weight 0" in msg


def test_timeouts_cross_field_names_both_values() -> None:
    text = BASE.replace("gpu-a: {kind: vllm,",
                        "gpu-a: {kind: vllm, timeouts: {first_byte: 90, total: 30},")
    (msg,) = errors(text)
    assert "first_byte (90.0) must not exceed total (30.0)" in msg


def test_invalid_yaml_reports_line() -> None:
    (msg,) = errors("models:\n  chat: [unclosed\n")
    assert msg.startswith("p.yaml:") and "invalid YAML" in msg


def test_every_shipped_policy_is_valid() -> None:
    root = Path(__file__).resolve().parents[3] / "policies"
    env = {"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "a", "GEMINI_API_KEY": "g",
           "AZURE_OPENAI_API_KEY": "z", "GATEWAY_ADMIN_KEY": "admin", "GROQ_API_KEY": "q",
           "ALERTS_WEBHOOK_SECRET": "s"}
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        load_policy(f, env)


def test_policy_check_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("gpu-b, model", "gpu-c, model"))
    r = subprocess.run([sys.executable, "-m", "gateway", "policy", "check", str(bad)],
                       capture_output=True, text=True, env={"OPENAI_KEY": "k", "PATH": ""})
    assert r.returncode == 1
    assert "models.chat.deployments[1].provider: unknown provider 'gpu-c'" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    r = subprocess.run([sys.executable, "-m", "gateway", "policy", "check", str(good)],
                       capture_output=True, text=True, env={"OPENAI_KEY": "k", "PATH": ""})
    assert r.returncode == 0, r.stderr
