"""`/v1/messages` ingress: Anthropic validation and the Anthropic → OpenAI request translation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.api.anthropic import parse_messages_request
from gateway.errors import InvalidRequest
from tests.unit.providers.golden import check, read

HEADERS = {"x-api-key": "gw-client-key", "anthropic-version": "2023-06-01",
           "anthropic-beta": "tools-2024-05-16", "x-request-id": "req-7"}


def parse(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return parse_messages_request(json.dumps(body).encode(), headers or HEADERS)


def test_golden_translation_and_call_fields() -> None:
    raw = read("ingress/messages_tools.request.json")
    call = parse_messages_request(raw, HEADERS)
    assert call.ingress == "anthropic" and call.endpoint == "chat"
    assert call.model == "claude-public" and call.stream and call.client_include_usage
    assert call.native_body == json.loads(raw)
    assert call.api_key == "gw-client-key" and call.client_request_id == "req-7"
    assert call.request_id != "req-7"  # the ledger key is always the gateway's own
    assert call.headers["anthropic-beta"] == "tools-2024-05-16"
    assert "x-api-key" not in call.headers  # credentials stay with authentication
    assert call.session == "u-7"
    assert json.loads(call.raw) == call.body  # raw is the OpenAI-shaped body
    check("ingress/messages_tools.expected.json", call.body)


def test_bearer_auth_and_plain_string_content() -> None:
    call = parse({"model": "m", "max_tokens": 5, "system": "sys",
                  "messages": [{"role": "user", "content": "hi"}]},
                 {"authorization": "Bearer gw-k2"})
    assert call.api_key == "gw-k2" and not call.stream and not call.client_include_usage
    assert call.body == {"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("body", "message", "param"), [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]},
     "max_tokens: Field required", "max_tokens"),
    ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
     "max_tokens: Input should be", "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages: Field required", "messages"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "at least one message", "messages"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model: Field required",
     "model"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages.0.role", "messages.0.role"),
    ({"model": "m", "max_tokens": 5, "stream": "yes",
      "messages": [{"role": "user", "content": "x"}]}, "stream: Input should be", "stream"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages.0.content.0.type", "messages.0.content.0.type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "sometimes"}, "tools": [{"name": "f", "input_schema": {}}]},
     "tool_choice.type", "tool_choice.type"),
])
def test_rejected_like_anthropic(body: dict[str, Any], message: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse(body)
    assert message in e.value.message and e.value.param == param
    assert e.value.status == 400


def test_not_json_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        parse_messages_request(b"{nope", HEADERS)


def test_tool_result_images_follow_in_a_user_message() -> None:
    call = parse({"model": "m", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "here"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAA="}}]}]}]})
    assert call.body["messages"][1:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "here"},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AAA="}}]}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "tool", "name": "f", "disable_parallel_tool_use": True},
     {"tool_choice": {"type": "function", "function": {"name": "f"}},
      "parallel_tool_calls": False}),
])
def test_tool_choice_mapping(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = parse({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                  "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                  "tool_choice": choice}).body
    assert {k: body[k] for k in expected} == expected


def test_output_config_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = parse({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                  "output_config": {"format": {"type": "json_schema", "schema": schema}}}).body
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema}}
