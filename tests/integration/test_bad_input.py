"""Bad input is a 400 in the ingress's error shape naming the field — never a 500 — and a
rejected request leaves nothing reserved (issue 8, item 1)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.keys import generate_key, hash_key
from tests.integration.conftest import provider, simple_policy

KEY = generate_key()
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


@pytest.fixture
def gw(fakes: Any, gateway: Any, tmp_path: Any) -> Any:
    up = fakes("up")
    return gateway(simple_policy(
        tmp_path, {"up": provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m",
                                   "pricing": [{"input": "1", "output": "2"}]}]}},
        tenants={"acme": {"keys": [{"id": "k1", "hash": hash_key(KEY)}],
                          "limits": {"concurrency": 2},
                          "budget": {"daily_usd": "5"}}}))


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **fields}


def msgs(**fields: Any) -> dict[str, Any]:
    return {"model": "chat", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}], **fields}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# (path, raw JSON body, the param the error must name)
CASES: list[tuple[str, str, str | None]] = [
    (CHAT, json.dumps(chat(stream=True, stream_options=5)), "stream_options"),
    (CHAT, json.dumps(chat(stream=True, stream_options="x")), "stream_options"),
    (CHAT, json.dumps(chat(stream_options={"include_usage": "yes"})),
     "stream_options.include_usage"),
    (CHAT, '{"model": "chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages[0].content"),
    (CHAT, json.dumps({"model": "chat", "messages": [{"role": 5, "content": "hi"}]}),
     "messages[0].role"),
    (CHAT, '{"model": "chat", "messages": [{"role": "user", "content": ' + deep(10_000) + "}]}",
     "messages[0].content[0][0][0]…"),
    (CHAT, json.dumps(chat(max_tokens=1e30)), "max_tokens"),
    (CHAT, json.dumps(chat(max_tokens=10**30)), "max_tokens"),
    (CHAT, json.dumps(chat(max_completion_tokens=-1)), "max_completion_tokens"),
    (CHAT, json.dumps(chat(n="2")), "n"),
    (CHAT, json.dumps(chat(user=["u"])), "user"),
    (CHAT, json.dumps(chat(tools=[{"type": "function", "function": {"name": 7}}])),
     "tools[0].function.name"),
    (CHAT, json.dumps(chat(tools="all")), "tools"),
    (CHAT, json.dumps({"model": "chat", "messages": [
        {"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]}),
     "messages[0].content[0].text"),
    (CHAT, json.dumps(chat(temperature=float("nan"))), "temperature"),  # NaN is not JSON
    ("/v1/embeddings", json.dumps({"model": "chat", "input": {"a": 1}}), "input"),
    ("/v1/completions", json.dumps({"model": "chat", "prompt": 5}), "prompt"),
    (MESSAGES, json.dumps(msgs(stream="yes")), "stream"),
    (MESSAGES, '{"model": "chat", "max_tokens": 5, "messages": [{"role": "user", '
               '"content": "\\udfff"}]}', "messages.0.content"),
    (MESSAGES, json.dumps({"model": "chat", "max_tokens": 5,
                           "messages": [{"role": ["user"], "content": "hi"}]}),
     "messages.0.role"),
    (MESSAGES, '{"model": "chat", "max_tokens": 5, "messages": ' + deep(10_000) + "}",
     "messages.0.0.0.0.0…"),
    (MESSAGES, json.dumps(msgs(max_tokens=1e30)), "max_tokens"),
    (MESSAGES, json.dumps(msgs(metadata={"user_id": 5})), "metadata.user_id"),
]


@pytest.mark.parametrize(("path", "raw", "param"), CASES,
                         ids=[f"{i}-{c[0].rsplit('/', 1)[-1]}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_400_naming_the_field(gw: Any, path: str, raw: str,
                                             param: str | None) -> None:
    r = httpx.post(gw.url + path, content=raw.encode(),
                   headers={"authorization": f"Bearer {KEY}",
                            "content-type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    body = r.json()
    if path == MESSAGES:
        # Anthropic's shape: no `param`, the message starts with the field's path.
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert param is not None and param in body["error"]["message"]
    else:
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == param, body
        assert param is not None and param in body["error"]["message"]


def test_rejected_requests_leave_the_tenant_admissible(gw: Any) -> None:
    """The tenant has concurrency 2 and a budget: after a burst of bad requests every slot and
    every dollar is still there."""
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    for _path, raw, _ in CASES * 2:
        httpx.post(gw.url + CHAT, content=raw.encode(), headers=headers, timeout=10)
    for _ in range(3):
        ok = httpx.post(gw.url + CHAT, json=chat(max_tokens=10), headers=headers, timeout=10)
        assert ok.status_code == 200, ok.text
