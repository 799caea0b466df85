"""Deny-lists and policy regexes."""

from __future__ import annotations

from gateway.guards.base import Finding, merge, redact
from gateway.guards.patterns import deny_list, regexes


def spans(d: object, text: str) -> list[str]:
    return [text[f.start:f.end] for f in d.find(text)]  # type: ignore[attr-defined]


def test_deny_list_matches_whole_words_any_case_and_spacing() -> None:
    d = deny_list(["project falcon", "acme"])
    assert spans(d, "About PROJECT\n  Falcon and Acme.") == ["PROJECT\n  Falcon", "Acme"]
    assert spans(d, "acmeville and falconry") == []  # not whole words


def test_deny_list_prefers_the_longer_phrase_and_handles_symbols() -> None:
    d = deny_list(["acme", "acme corp", "c++"])
    assert spans(d, "acme corp ships c++ code") == ["acme corp", "c++"]


def test_deny_list_case_sensitive() -> None:
    d = deny_list(["Falcon"], case_sensitive=True)
    assert spans(d, "falcon Falcon") == ["Falcon"]


def test_regexes_find_every_pattern() -> None:
    d = regexes([r"ORD-\d{6}", r"\bsecret-\w+"])
    assert spans(d, "ORD-123456 and secret-plan, ORD-12") == ["ORD-123456", "secret-plan"]


def test_redact_merges_overlaps_and_fills_the_label() -> None:
    text = "abcdefghij"
    found = [Finding(2, 5, "x"), Finding(4, 7, "y"), Finding(8, 9, "z")]
    assert merge(found) == [Finding(2, 7, "x"), Finding(8, 9, "z")]
    assert redact(text, found, "<{label}>") == "ab<x>h<z>j"
    assert redact(text, [], "<{label}>") is text
