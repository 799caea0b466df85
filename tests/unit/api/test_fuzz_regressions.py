"""Inputs the fuzzers found (tests/integration/test_openapi_fuzz.py and
test_parse_properties.py), each once a 500, a 502 or a request sent upstream with `None` in it;
now a 400 that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.api.anthropic import parse_messages_request
from gateway.api.bodies import check_messages, check_openai
from gateway.errors import InvalidRequest


def messages(*content: Any, role: str = "user", **top: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 5, **top,
                       "messages": [{"role": role, "content": list(content)}]}).encode()


@pytest.mark.parametrize(("raw", "param"), [
    # `output_config` used to be read with `.get` whatever it was: AttributeError, a 500.
    (json.dumps({"model": "m", "max_tokens": 5, "output_config": [1],
                 "messages": [{"role": "user", "content": "hi"}]}).encode(), "output_config"),
    (json.dumps({"model": "m", "max_tokens": 5, "output_config": {"format": "json"},
                 "messages": [{"role": "user", "content": "hi"}]}).encode(),
     "output_config.format"),
    # These reached the backend as `data:None;base64,None`, a `None` tool name or id, and a
    # tool input of `5` serialised as arguments.
    (messages({"type": "image", "source": {"type": "base64"}}),
     "messages.0.content.0.source.media_type"),
    (messages({"type": "image", "source": {"type": "base64", "media_type": "image/png"}}),
     "messages.0.content.0.source.data"),
    (messages({"type": "document", "source": {"type": "text", "data": {"a": 1}}}),
     "messages.0.content.0.source.data"),
    (messages({"type": "tool_use", "id": "t1", "input": {}}, role="assistant"),
     "messages.0.content.0.name"),
    (messages({"type": "tool_use", "id": "t1", "name": "f", "input": 5}, role="assistant"),
     "messages.0.content.0.input"),
    (messages({"type": "tool_use", "name": "f"}, role="assistant"), "messages.0.content.0.id"),
    (messages({"type": "tool_result", "content": "ok"}), "messages.0.content.0.tool_use_id"),
])
def test_messages_translation_refuses_what_it_cannot_forward(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(raw, {})
    assert info.value.param == param
    assert info.value.message.startswith(param)


def test_well_formed_blocks_still_translate() -> None:
    call = parse_messages_request(messages(
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}, role="assistant"), {})
    assert call.body["messages"][0]["tool_calls"][0]["function"] == {
        "name": "f", "arguments": '{"x": 1}'}
    call = parse_messages_request(messages(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}), {})
    assert call.body["messages"][0]["content"][0]["image_url"]["url"] == \
        "data:image/png;base64,AA"
    assert call.body["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_embeddings_cannot_ask_for_a_stream() -> None:
    # `stream: true` made the gateway read the backend's JSON reply as SSE: a 502.
    with pytest.raises(InvalidRequest) as info:
        check_openai("embeddings", {"model": "m", "input": "x", "stream": True})
    assert info.value.param == "stream"
    check_openai("embeddings", {"model": "m", "input": "x", "stream": False})


@pytest.mark.parametrize("body", [None, [], 3, "x"])
def test_a_body_that_is_not_an_object_is_a_400_without_a_param(body: Any) -> None:
    for check in (lambda: check_openai("chat", body), lambda: check_messages(body)):
        with pytest.raises(InvalidRequest) as info:
            check()
        assert info.value.param is None
        assert info.value.message == "The request body must be a JSON object."
