"""The console's view of the policy: secrets masked, reloads recorded, the diff."""

from __future__ import annotations

import yaml

from gateway.keys import hash_key
from gateway.policy.history import PolicyHistory, mask, masked_text
from gateway.policy.load import parse_policy

SECRETS = ["sk-provider-secret-1", "admin-secret-2", "pg-password-3", "hdr-secret-4",
           "redis-pass-5"]


def _policy(weight: float = 1.0):  # type: ignore[no-untyped-def]
    return parse_policy(yaml.safe_dump({
        "server": {"admin_key": SECRETS[1]},
        "state": {"redis_url": f"redis://:{SECRETS[4]}@127.0.0.1:6379/0"},
        "ledger": {"url": f"postgresql://gw:{SECRETS[2]}@db:5432/gw"},
        "providers": {"up": {"kind": "openai", "base_url": "https://api.openai.com/v1",
                             "api_key": SECRETS[0],
                             "headers": {"authorization": f"Bearer {SECRETS[3]}"}}},
        "models": {"m": {"deployments": [{"provider": "up", "model": "gpt", "weight": weight}]}},
        "tenants": {"acme": {"keys": [{"id": "k1", "hash": hash_key("plain-key-abc")}]}},
    }), "policy.yaml", {})


def test_masked_text_holds_no_secret_and_keeps_the_rest() -> None:
    text = masked_text(_policy())
    for s in SECRETS:
        assert s not in text
    assert hash_key("plain-key-abc").split(":")[1] not in text
    assert "postgresql://gw:***@db:5432/gw" in text
    assert "https://api.openai.com/v1" in text and "weight: 1.0" in text


def test_mask_walks_nested_values() -> None:
    assert mask({"a": [{"api_key": "x", "n": 1}], "headers": {"h": "v"}}) == \
        {"a": [{"api_key": "***", "n": 1}], "headers": {"h": "***"}}
    assert mask({"api_key": None}) == {"api_key": None}


def test_reloads_are_recorded_with_a_diff() -> None:
    h = PolicyHistory.start(_policy(), "policy.yaml")
    assert h.diff() == [] and h.as_json()["last_reload"] is None
    h.not_applied("rejected", ["policy.yaml:3: models.m: bad\nsecond line"])
    doc = h.as_json()
    assert doc["last_reload"]["result"] == "rejected"
    assert doc["last_reload"]["messages"] == ["policy.yaml:3: models.m: bad", "second line"]
    assert h.diff() == []  # nothing changed
    h.applied(_policy(weight=3.0))
    diff = h.diff()
    assert "-      weight: 1.0" in diff and "+      weight: 3.0" in diff
    assert h.as_json()["last_reload"]["result"] == "ok"
    for s in SECRETS:
        assert s not in str(h.as_json())
