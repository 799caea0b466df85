"""Upstream error text keeps its meaning and loses keys and internal addresses."""

from __future__ import annotations

import pytest

from gateway.providers.scrub import scrub


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("Incorrect API key provided: sk-proj-abcdEFGH1234_xyz.", "sk-proj-abcdEFGH1234_xyz",
     "Incorrect API key provided"),
    ("invalid x-api-key sk-ant-api03-AAAABBBBCCCC", "sk-ant-api03-AAAABBBBCCCC",
     "invalid x-api-key"),
    ("API key AIzaSyA1234567890abcdefghijklmnop is invalid", "AIzaSyA1234567890abcdefghijklmnop",
     "is invalid"),
    ("GET /v1beta/models?key=abc123secret failed", "abc123secret", "failed"),
    ("header x-api-key: s3cr3tvalue rejected", "s3cr3tvalue", "rejected"),
    ('{"api-key": "0123456789abcdef"} was wrong', "0123456789abcdef", "was wrong"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig denied",
     "eyJhbGciOiJIUzI1NiJ9", "denied"),
    ("upstream https://gpu-a.internal:8000/v1/chat/completions timed out", "gpu-a.internal",
     "timed out"),
    ("connect to 10.1.2.3:8443 refused", "10.1.2.3", "refused"),
    ("connect to vllm-0.vllm.svc:8000 refused", "vllm-0.vllm.svc", "refused"),
    ("dial tcp llama.prod.corp: no route", "llama.prod.corp", "no route"),
])
def test_secrets_and_hosts_are_removed(text: str, gone: str, kept: str) -> None:
    out = scrub(text)
    assert gone not in out
    assert kept in out


def test_the_configured_key_is_removed_verbatim() -> None:
    assert scrub("your key 'plain-key-value' is wrong", ("plain-key-value",)) == \
        "your key '[redacted-key]' is wrong"


def test_ordinary_messages_are_untouched() -> None:
    for text in ("prompt is too long: 210000 tokens > 200000 maximum",
                 "max_tokens: Field required", "Overloaded", "error:500 at step 3",
                 "Please use a valid role: user, model."):
        assert scrub(text) == text
