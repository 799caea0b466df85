"""Anthropic adapter: OpenAI → Messages requests, Messages → OpenAI replies and streams, the
native pass-through, and error classification."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.accounting.usage import Usage
from gateway.errors import InvalidRequest
from gateway.policy.models import AnthropicProvider, Deployment
from gateway.providers.anthropic import AnthropicAdapter, to_messages_request
from gateway.providers.base import ErrorKind, Target
from tests.unit.providers.golden import call, check, feed_in_pieces, load, read, sse_events

KEY = "sk-ant-api03-SECRETSECRETSECRET"


def adapter(**kw: Any) -> AnthropicAdapter:
    cfg = AnthropicProvider(kind="anthropic", base_url=kw.pop("base_url", "https://api.anthropic.com"),
                            api_key=KEY, headers={"x-team": "ml"}, **kw)
    return AnthropicAdapter("ant", cfg)


TARGET = Target("claude", Deployment(provider="ant", model="claude-sonnet-4-5"), "ant")


# ---- requests --------------------------------------------------------------------------

def test_request_golden_system_tools_images_and_tool_results() -> None:
    body = load("anthropic/chat_tools.request.json")
    req = adapter().build_request(call(body, stream=True), TARGET, native=False)
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["x-team"] == "ml"
    check("anthropic/chat_tools.expected.json", json.loads(req.body))


def test_request_merges_consecutive_roles_with_tool_results_first() -> None:
    out = to_messages_request({"messages": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "also this"},
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
    ]}, "m", 4096)
    assert out["messages"] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
            {"type": "text", "text": "also this"}]},
    ]
    assert out["max_tokens"] == 4096  # the provider's default_max_tokens


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
])
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}],
                            "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert to_messages_request(body, "m", 10)["tool_choice"] == expected


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
])
def test_untranslatable_requests_are_client_errors(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        to_messages_request(body, "m", 10)
    assert e.value.param == param


def test_base_url_with_or_without_v1() -> None:
    for base in ("http://h:1", "http://h:1/", "http://h:1/v1"):
        req = adapter(base_url=base).build_request(
            call({"messages": [{"role": "user", "content": "x"}]}), TARGET, False)
        assert req.url == "http://h:1/v1/messages"


def test_embeddings_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidRequest, match="no /v1/embeddings"):
        adapter().build_request(call({"input": "x"}, endpoint="embeddings"), TARGET, False)


def test_native_request_sends_the_client_body_with_the_upstream_model() -> None:
    native = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
              "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}
    c = call({"model": "claude", "messages": []}, ingress="anthropic", native_body=native,
             headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    req = adapter().build_request(c, TARGET, native=True)
    assert json.loads(req.body) == {**native, "model": "claude-sonnet-4-5"}
    assert req.headers["anthropic-beta"] == "prompt-caching-2024-07-31"


# ---- replies ---------------------------------------------------------------------------

def test_reply_golden_thinking_text_tool_use_and_cache_usage() -> None:
    body = read("anthropic/reply_tool_use.json")
    reply = adapter().parse_reply(call({"model": "claude"}), TARGET, body, native=False)
    assert reply.usage == Usage(input_uncached=472, cache_read=2048, cache_write=100, output=89)
    out = json.loads(reply.body)
    assert out["usage"]["prompt_tokens"] == 472 + 2048 + 100  # inclusive, as OpenAI counts
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 2048}
    check("anthropic/reply_tool_use.expected.json", out)


def test_native_reply_renames_model_and_reads_usage() -> None:
    body = read("anthropic/reply_tool_use.json").replace(b"claude-sonnet-4-5-20250929",
                                                          b"claude-sonnet-4-5")
    c = call({"model": "claude"}, ingress="anthropic")
    reply = adapter().parse_reply(c, TARGET, body, native=True)
    assert json.loads(reply.body) == {**json.loads(body), "model": "claude"}
    assert reply.usage is not None and reply.usage.cache_read == 2048


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
])
def test_stop_reason_to_finish_reason(stop: str, finish: str) -> None:
    msg = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop,
           "usage": {"input_tokens": 1, "output_tokens": 1}}
    reply = adapter().parse_reply(call({"model": "c"}), TARGET, json.dumps(msg).encode(), False)
    assert json.loads(reply.body)["choices"][0]["finish_reason"] == finish


def test_thinking_tokens_are_split_out_when_reported() -> None:
    msg = {"id": "m", "content": [], "stop_reason": "end_turn",
           "usage": {"input_tokens": 3, "output_tokens": 50,
                     "output_tokens_details": {"thinking_tokens": 30}}}
    reply = adapter().parse_reply(call({"model": "c"}), TARGET, json.dumps(msg).encode(), False)
    assert reply.usage == Usage(input_uncached=3, output=20, reasoning=30)
    assert json.loads(reply.body)["usage"]["completion_tokens"] == 50


# ---- streams ---------------------------------------------------------------------------

@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_stream_golden_thinking_text_and_two_tool_calls(piece: int) -> None:
    tr = adapter().stream(call({"model": "claude"}, stream=True, include_usage=True), TARGET,
                          native=False)
    out = feed_in_pieces(tr, read("anthropic/stream_tool_use.sse"), piece)
    assert tr.done and tr.error is None
    assert tr.usage == Usage(input_uncached=472, cache_read=2048, output=89)
    check("anthropic/stream_tool_use.expected.json", sse_events(out))


def test_stream_usage_chunk_only_when_the_client_asked() -> None:
    tr = adapter().stream(call({"model": "claude"}, stream=True), TARGET, native=False)
    events = sse_events(feed_in_pieces(tr, read("anthropic/stream_tool_use.sse")))
    assert events[-1] == [None, "[DONE]"]
    assert all(e[1]["choices"] for e in events[:-1])
    assert tr.usage is not None  # accounting still sees it


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


START = {"type": "message_start", "message": {"id": "msg_1", "type": "message",
         "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": None,
         "usage": {"input_tokens": 9, "output_tokens": 1}}}


def test_error_before_content_emits_nothing_so_the_proxy_can_fall_back() -> None:
    tr = adapter().stream(call({"model": "c"}, stream=True), TARGET, native=False)
    out = tr.feed(_sse(START, {"type": "ping"}, {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}))
    assert out == b""
    assert tr.error is not None and tr.error.kind is ErrorKind.RETRYABLE
    assert tr.error.status == 529 and tr.error.message == "Overloaded"
    assert not tr.done


def test_error_mid_stream_is_reported_not_forwarded() -> None:
    tr = adapter().stream(call({"model": "c"}, stream=True), TARGET, native=False)
    first = tr.feed(_sse(START, {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}},
                         {"type": "content_block_delta", "index": 0,
                          "delta": {"type": "text_delta", "text": "Hi"}}))
    assert [e[1]["choices"][0]["delta"] for e in sse_events(first)] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}]
    assert tr.feed(_sse({"type": "error", "error": {"type": "api_error", "message": "boom"}})) \
        == b""
    assert tr.error is not None and tr.error.kind is ErrorKind.RETRYABLE
    assert tr.usage == Usage(input_uncached=9, output=1)  # partial, as far as it got


def test_native_stream_passes_events_through_with_the_public_model() -> None:
    data = read("anthropic/stream_tool_use.sse")
    tr = adapter().stream(call({"model": "claude"}, stream=True, ingress="anthropic"), TARGET,
                          native=True)
    out = feed_in_pieces(tr, data, 5)
    got, want = sse_events(out), sse_events(data)
    want[0][1]["message"]["model"] = "claude"
    assert got == want
    # Everything but message_start is the upstream's bytes exactly.
    assert out.split(b"\n\n", 1)[1] == data.split(b"\n\n", 1)[1]
    assert tr.done and tr.usage == Usage(input_uncached=472, cache_read=2048, output=89)


def test_native_stream_holds_message_start_until_content() -> None:
    tr = adapter().stream(call({"model": "c"}, stream=True, ingress="anthropic"), TARGET, True)
    assert tr.feed(_sse(START, {"type": "ping"})) == b""
    assert tr.feed(_sse({"type": "error", "error": {"type": "overloaded_error",
                                                    "message": "Overloaded"}})) == b""
    assert tr.error is not None and tr.error.kind is ErrorKind.RETRYABLE


# ---- errors ----------------------------------------------------------------------------

def _err(etype: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": etype, "message": message},
                       "request_id": "req_1"}).encode()


@pytest.mark.parametrize(("status", "body", "kind"), [
    (429, _err("rate_limit_error", "Number of request tokens has exceeded your per-minute rate "
                                   "limit"), ErrorKind.RETRYABLE),
    (529, _err("overloaded_error", "Overloaded"), ErrorKind.RETRYABLE),
    (500, _err("api_error", "Internal server error"), ErrorKind.RETRYABLE),
    (504, _err("timeout_error", "Request timed out"), ErrorKind.RETRYABLE),
    (400, _err("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
     ErrorKind.CONTEXT_LENGTH),
    (400, _err("invalid_request_error", "input length and `max_tokens` exceed context limit: "
                                        "197000 + 8192 > 200000"), ErrorKind.CONTEXT_LENGTH),
    (400, _err("invalid_request_error", "max_tokens: Field required"), ErrorKind.CLIENT),
    (413, _err("request_too_large", "Request exceeds the maximum allowed number of bytes."),
     ErrorKind.CLIENT),
    (401, _err("authentication_error", "invalid x-api-key"), ErrorKind.CONFIG),
    (403, _err("permission_error", "Your API key does not have permission"), ErrorKind.CONFIG),
    (404, _err("not_found_error", "model: claude-nope"), ErrorKind.CLIENT),
    (502, b"<html>Bad Gateway</html>", ErrorKind.RETRYABLE),
])
def test_classification_table(status: int, body: bytes, kind: ErrorKind) -> None:
    c = adapter().classify(status, body, {})
    assert c.kind is kind and c.status == status
    assert c.message


def test_classification_reads_retry_after_and_scrubs_secrets() -> None:
    body = _err("rate_limit_error", f"key {KEY} at https://internal.corp:8443/v1 hit the limit")
    c = adapter().classify(429, body, {"retry-after": "7"})
    assert c.retry_after == 7.0
    assert KEY not in c.message and "internal.corp" not in c.message
    assert c.type == "rate_limit_error"


def test_json_schema_response_format_becomes_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    out = to_messages_request({"messages": [{"role": "user", "content": "x"}],
                               "response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "s", "schema": schema}}},
                              "m", 10)
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
