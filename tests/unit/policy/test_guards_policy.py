"""`guards:` in the policy: what is accepted, and errors that say what to change."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.policy.guards import Guard
from gateway.policy.load import parse_policy


def guard(**kw: Any) -> Guard:
    return Guard.model_validate(kw)


def test_defaults_and_each_detector() -> None:
    g = guard(detector={"kind": "pii"})
    assert (g.stage, g.action, g.applies_to.external_only) == ("input", "block", False)
    for d in ({"kind": "secrets"}, {"kind": "deny_list", "words": ["x"]},
              {"kind": "regex", "patterns": ["a+"]}, {"kind": "length", "max_chars": 10},
              {"kind": "model", "model": "lg"}):
        guard(detector=d)
        # Every detector checks replies too (streams incrementally: docs/guards.md).
        assert guard(detector=d, stage="both").stage == "both"


@pytest.mark.parametrize("kw,message", [
    ({"detector": {"kind": "regex", "patterns": ["("]}}, "not a valid regular expression"),
    ({"detector": {"kind": "regex", "patterns": ["a*"]}}, "matches the empty string"),
    ({"detector": {"kind": "length"}}, "needs max_chars or max_tokens"),
    ({"detector": {"kind": "model", "model": "m"}, "action": "redact"}, "nothing to redact"),
    ({"detector": {"kind": "model", "model": "m", "segment_chars": 8}}, "segment_chars"),
    ({"detector": {"kind": "length", "max_chars": 5}, "action": "redact"}, "nothing to redact"),
    ({"detector": {"kind": "pii", "national_ids": ["xx.id"]}}, "unknown national id"),
    ({"detector": {"kind": "pii", "phone_regions": ["XX"]}}, "unknown phone region"),
    ({"detector": {"kind": "secrets", "plugins": ["Nope"]}}, "unknown detect-secrets plugin"),
    ({"detector": {"kind": "deny_list", "words": [" "]}}, "must not be empty"),
    ({"detector": {"kind": "pii"}, "replacement": "{match}"}, "only the {label}"),
    ({"detector": {"kind": "nope"}}, "kind"),
])
def test_bad_guards_are_refused_with_the_fix(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{")
                       .replace("}", r"\}")):
        guard(**kw)


def test_policy_check_names_an_unknown_classifier_model() -> None:
    text = """
providers: {p: {kind: vllm, base_url: "http://127.0.0.1:1/v1"}}
models: {chat: {deployments: [{provider: p, model: m}]}}
guards:
  lg: {detector: {kind: model, model: chta}}
"""
    with pytest.raises(Exception) as e:
        parse_policy(text, "policy.yaml", {})
    assert "guards.lg.detector.model" in str(e.value) and "chat" in str(e.value)


def test_the_guards_documentation_examples_are_valid() -> None:
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).resolve().parents[3] / "docs" / "guards.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    sections = [b["guards"] for b in blocks if isinstance(b, dict) and "guards" in b]
    assert len(sections) >= 2
    for section in sections:
        for g in section.values():
            guard(**g)
