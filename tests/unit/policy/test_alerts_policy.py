"""The `alerts:` section: webhooks whose secrets never live in the policy file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.load import PolicyError, parse_policy

BASE = """
providers:
  up: {kind: openai-compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  chat: {deployments: [{provider: up, model: m}]}
alerts:
  webhooks:
"""


def load(hooks: str, env: dict[str, str] | None = None, file: str = "p.yaml") -> object:
    return parse_policy(BASE + hooks, file, env or {})


def errors(hooks: str, env: dict[str, str] | None = None, file: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load(hooks, env, file)
    return [i.render("p.yaml") for i in info.value.issues]


def test_secret_from_env_is_masked_everywhere_the_policy_is_shown() -> None:
    p = load("    - {name: fin, url: 'https://h.example/x', secret: '${S}'}\n",
             {"S": "whsec-123"})
    hook = p.alerts.webhooks[0]  # type: ignore[attr-defined]
    assert hook.secret.get_secret_value() == "whsec-123"
    assert hook.events == ["budget_threshold", "budget_exhausted", "circuit_open", "rollout"]
    for shown in (repr(p), str(p.model_dump()), p.model_dump_json()):  # type: ignore[attr-defined]
        assert "whsec-123" not in shown


def test_inline_secret_is_refused_naming_the_path() -> None:
    out = errors("    - {name: fin, url: 'https://h.example/x', secret: plaintext}\n")
    assert len(out) == 1
    assert "alerts.webhooks[0].secret" in out[0] and "${ENV_VAR}" in out[0]


def test_secret_file_is_read_relative_to_the_policy(tmp_path: Path) -> None:
    (tmp_path / "hmac").write_text("from-file\n")
    p = load("    - {name: fin, url: 'https://h.example/x', secret_file: hmac}\n",
             file=str(tmp_path / "p.yaml"))
    assert p.alerts.webhooks[0].secret.get_secret_value() == "from-file"  # type: ignore[attr-defined]


def test_unreadable_secret_file_and_both_sources_are_errors(tmp_path: Path) -> None:
    out = errors("    - {name: fin, url: 'https://h.example/x', secret_file: nope}\n",
                 file=str(tmp_path / "p.yaml"))
    assert any("secret_file: cannot read" in e for e in out), out
    out = errors("    - {name: fin, url: 'https://h.example/x', secret: '${S}', "
                 "secret_file: x}\n", {"S": "s"})
    assert any("either secret or secret_file" in e for e in out), out


@pytest.mark.parametrize("hooks,expected", [
    ("    - {name: fin, url: 'https://h.example/x'}\n", "needs a secret"),
    ("    - {name: s, url: 'ftp://h.example/x', kind: slack}\n", "http:// or https://"),
    ("    - {name: s, url: 'https://h.example/x', kind: teams}\n", "alerts.webhooks[0].kind"),
    ("    - {name: s, url: 'https://h.example/x', kind: slack, events: [budget]}\n",
     "alerts.webhooks[0].events[0]"),
    ("    - {name: s, url: 'https://h.example/x', kind: slack}\n"
     "    - {name: s, url: 'https://h.example/y', kind: slack}\n", "names must be unique"),
])
def test_bad_webhooks_are_named(hooks: str, expected: str) -> None:
    out = errors(hooks)
    assert any(expected in e for e in out), out


def test_slack_webhook_needs_no_secret_and_host_hides_the_path() -> None:
    p = load("    - {name: s, url: 'https://hooks.slack.com/services/T/B/SECRET', "
             "kind: slack}\n")
    hook = p.alerts.webhooks[0]  # type: ignore[attr-defined]
    assert hook.secret is None and hook.host == "hooks.slack.com"
    # The policy as the console shows it: host only, never the path that is the credential.
    shown = p.model_dump_json()  # type: ignore[attr-defined]
    assert "SECRET" not in shown and "https://hooks.slack.com/***" in shown
    assert hook.url.endswith("/T/B/SECRET")  # what deliveries use
