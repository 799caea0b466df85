"""The `/v1/messages` codec: OpenAI replies, streams and errors → Anthropic's, checked against
the golden fixtures and the official `anthropic` SDK's own stream accumulator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from gateway.api.anthropic_codec import CODEC
from gateway.errors import (
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
)
from tests.unit.providers.golden import call, check, feed_in_pieces, read, sse_events

NATIVE = {"model": "claude-public", "max_tokens": 100, "stop_sequences": ["###"],
          "messages": [{"role": "user", "content": "x"}]}


def anthropic_call(stream: bool = False) -> Any:
    return call({"model": "claude-public"}, stream=stream, include_usage=stream,
                ingress="anthropic", native_body=NATIVE)


def test_reply_golden_with_thinking_text_tool_use_and_cache_usage() -> None:
    out = json.loads(CODEC.reply(read("ingress/reply_tool_calls.openai.json"), anthropic_call()))
    Message.model_validate(out)  # the SDK's own model accepts it
    assert out["usage"] == {"input_tokens": 20, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 100, "output_tokens": 30}
    check("ingress/reply_tool_calls.expected.json", out)


@pytest.mark.parametrize(("finish", "matched", "reason", "seq"), [
    ("stop", None, "end_turn", None), ("stop", "###", "stop_sequence", "###"),
    ("length", None, "max_tokens", None), ("tool_calls", None, "tool_use", None),
    ("content_filter", None, "refusal", None),
])
def test_stop_reasons(finish: str, matched: Any, reason: str, seq: Any) -> None:
    body = {"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": finish,
                                             "stop_reason": matched,
                                             "message": {"role": "assistant", "content": "x"}}]}
    out = json.loads(CODEC.reply(json.dumps(body).encode(), anthropic_call()))
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, seq)


def test_native_reply_passes_through() -> None:
    body = json.dumps({"id": "msg_1", "type": "message", "content": []}).encode()
    assert CODEC.reply(body, anthropic_call()) == body


@pytest.mark.parametrize("piece", [3, 50, 100_000])
def test_stream_golden_text_and_two_tool_calls(piece: int) -> None:
    tr = CODEC.stream(anthropic_call(stream=True))
    out = feed_in_pieces(tr, read("ingress/stream_tool_calls.openai.sse"), piece)
    events = sse_events(out)
    check("ingress/stream_tool_calls.expected.json", events)
    # The SDK's accumulator builds the same message the non-streaming reply would be.
    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, data in events:
        assert name == data["type"]
        ev = TypeAdapter(RawMessageStreamEvent).validate_python(data)
        snapshot = accumulate_event(event=ev, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    assert [b.type for b in snapshot.content] == ["text", "tool_use", "tool_use"]
    assert snapshot.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert snapshot.stop_reason == "tool_use"
    assert snapshot.usage.input_tokens == 20 and snapshot.usage.cache_read_input_tokens == 100
    assert snapshot.usage.output_tokens == 30


def test_stream_without_content_still_closes_properly() -> None:
    tr = CODEC.stream(anthropic_call(stream=True))
    out = tr.feed(b"data: [DONE]\n\n") + tr.finish()
    assert [e[0] for e in sse_events(out)] == ["message_start", "message_delta", "message_stop"]


def test_native_stream_passes_through() -> None:
    data = b'event: message_start\ndata: {"type":"message_start"}\n\n'
    tr = CODEC.stream(anthropic_call(stream=True))
    assert tr.feed(data) == data and tr.finish() == b""


@pytest.mark.parametrize(("exc", "status", "etype"), [
    (InvalidRequest("max_tokens: Field required"), 400, "invalid_request_error"),
    (GatewayError("bad key", status=401), 401, "authentication_error"),
    (BudgetExceeded("budget"), 402, "billing_error"),
    (GatewayError("no", status=403), 403, "permission_error"),
    (ModelNotFound("no model"), 404, "not_found_error"),
    (GatewayError("big", status=413), 413, "request_too_large"),
    (RateLimited("slow down"), 429, "rate_limit_error"),
    (UpstreamError("all failed"), 502, "api_error"),
    (ServiceUnavailable("later"), 503, "overloaded_error"),
])
def test_errors_in_anthropic_format(exc: GatewayError, status: int, etype: str) -> None:
    assert exc.status == status
    body = json.loads(CODEC.error_body(exc))
    assert body == {"type": "error", "error": {"type": etype, "message": exc.message}}
    event = CODEC.error_event(exc)
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert json.loads(event.split(b"data: ", 1)[1]) == body
