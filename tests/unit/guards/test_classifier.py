"""Reading a classifier's verdict (Llama Guard's text, moderation results)."""

from __future__ import annotations

import json

from gateway.guards.classifier import _verdict, parse_llama_guard
from gateway.policy.guards import ModelDetector


def test_llama_guard_safe_unsafe_and_categories() -> None:
    assert parse_llama_guard("safe").unsafe is False
    r = parse_llama_guard("\n\nunsafe\nS1,S10")
    assert r.unsafe is True and r.categories == ("S1", "S10")
    assert parse_llama_guard("unsafe\nS9", ["S1"]).unsafe is False  # not a blocked category
    assert parse_llama_guard("unsafe\nS9", ["s9"]).unsafe is True
    assert parse_llama_guard("I cannot help").unsafe is None
    assert parse_llama_guard("").unsafe is None


def test_moderation_reply() -> None:
    d = ModelDetector(kind="model", model="mod", api="moderation")
    flagged = {"results": [{"flagged": True,
                            "categories": {"violence": True, "hate": False}}]}
    r = _verdict(d, json.dumps(flagged).encode())
    assert r.unsafe is True and r.categories == ("violence",)
    ok = {"results": [{"flagged": False, "categories": {"violence": False}}]}
    assert _verdict(d, json.dumps(ok).encode()).unsafe is False
    assert _verdict(d, b"not json").unsafe is None
