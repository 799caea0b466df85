"""The Responses codec's streams: chat SSE → Responses' typed events, checked against the golden
fixtures, the SDK's event models, and the SDK's own stream readers (`responses.create(stream=
True)` and `responses.stream()`), including a failure mid-stream, which both must raise."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.api.responses_codec import CODEC, ResponsesEventStream
from gateway.errors import RateLimited, ServiceUnavailable, UpstreamError
from tests.unit.api.responses_fixtures import (
    RESPONSE_ID,
    check,
    normalise,
    read,
    responses_call,
    sdk_client,
)
from tests.unit.providers.golden import feed_in_pieces, sse_events

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
NATIVE = {"model": "llama-public", "input": "x", "stream": True,
          "tools": [{"type": "function", "name": "get_weather", "parameters": {
              "type": "object", "properties": {"city": {"type": "string"}}}},
              {"type": "function", "name": "now", "parameters": {"type": "object"}}]}


def translate(fixture: str, piece: int = 100_000) -> tuple[bytes, Any]:
    call = responses_call(NATIVE, stream=True)
    return feed_in_pieces(CODEC.stream(call), read(fixture), piece), call


def checked_events(out: bytes) -> list[dict[str, Any]]:
    """Each event valid for the SDK, named as its type, numbered 0, 1, 2… without a gap."""
    events = []
    for n, (name, data) in enumerate(sse_events(out)):
        EVENTS.validate_python(data)
        assert name == data["type"] and data["sequence_number"] == n
        events.append(data)
    return events


@pytest.mark.parametrize("piece", [5, 64, 100_000])
@pytest.mark.parametrize("case", ["text", "tool_calls", "length"])
def test_stream_golden(case: str, piece: int) -> None:
    out, call = translate(f"stream_{case}.chat.sse", piece)
    events = checked_events(out)
    check(f"stream_{case}.expected.json", events)
    # The final event carries the whole Response, which is what gets stored.
    assert events[-1]["response"] == call.final_response
    Response.model_validate(call.final_response)


def test_crlf_streams_split_anywhere_give_the_same_events() -> None:
    lf, _ = translate("stream_tool_calls.chat.sse")
    call = responses_call(NATIVE, stream=True)
    crlf = read("stream_tool_calls.chat.sse").replace(b"\n", b"\r\n")
    out = feed_in_pieces(CODEC.stream(call), crlf, 7)
    assert normalise(sse_events(out)) == normalise(sse_events(lf))


@pytest.mark.parametrize("case", ["text", "tool_calls", "length"])
def test_stream_ends_with_what_the_reply_would_be(case: str) -> None:
    _, streamed = translate(f"stream_{case}.chat.sse")
    replied = responses_call(NATIVE)
    CODEC.reply(read(f"reply_{case}.chat.json"), replied)
    assert normalise(streamed.final_response) == normalise(replied.final_response)


def test_event_order_for_text_then_two_tool_calls() -> None:
    out, _ = translate("stream_tool_calls.chat.sse")
    assert [e["type"] for e in checked_events(out)] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]


def test_sdk_stream_helper_accumulates_text_tool_calls_and_usage() -> None:
    out, _ = translate("stream_tool_calls.chat.sse")
    client = sdk_client(out, stream=True)
    with client.responses.stream(model="llama-public", input="x") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Checking now."
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_abc", "get_weather", '{"city": "Paris"}'), ("call_def", "now", "{}")]
    assert final.id == RESPONSE_ID and final.status == "completed"
    assert final.usage is not None and final.usage.input_tokens == 120
    assert final.usage.input_tokens_details.cached_tokens == 100


def test_sdk_raw_stream_reads_reasoning_and_usage() -> None:
    out, _ = translate("stream_text.chat.sse")
    events = list(sdk_client(out, stream=True).responses.create(
        model="llama-public", input="x", stream=True))
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == "Try 7: 7 × 13 = 91."
    done = events[-1]
    assert done.type == "response.completed" and done.response.output_text == "No: 91 = 7 × 13."
    assert done.response.usage is not None
    assert done.response.usage.output_tokens_details.reasoning_tokens == 120


def test_length_cut_ends_incomplete() -> None:
    out, call = translate("stream_length.chat.sse")
    last = checked_events(out)[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert call.final_response["status"] == "incomplete"


def test_an_empty_stream_still_has_its_message() -> None:
    tr = CODEC.stream(responses_call(NATIVE, stream=True))
    out = tr.feed(b"data: [DONE]\n\n") + tr.finish()
    events = checked_events(out)
    assert [e["type"] for e in events][-3:] == [
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert Response.model_validate(events[-1]["response"]).output_text == ""


def test_an_end_without_done_completes_on_finish() -> None:
    chunks = read("stream_text.chat.sse").replace(b"data: [DONE]\n\n", b"")
    tr = CODEC.stream(responses_call(NATIVE, stream=True))
    out = tr.feed(chunks)
    assert b"response.completed" not in out
    events = checked_events(out + tr.finish())
    assert events[-1]["type"] == "response.completed" and tr.finish() == b""


# ---- failures -----------------------------------------------------------------------------------


def _cut(fixture: str, events: int) -> tuple[ResponsesEventStream, bytes]:
    tr = CODEC.stream(responses_call(NATIVE, stream=True))
    chunks = read(fixture).split(b"\n\n")[:events]
    return tr, tr.feed(b"\n\n".join(chunks) + b"\n\n")


def test_failure_mid_stream_ends_with_failed_then_error() -> None:
    tr, head = _cut("stream_tool_calls.chat.sse", 5)  # text done, first call half-way
    out = head + tr.error_event(UpstreamError("upstream vllm-a failed mid-stream: reset",
                                              code="upstream_stream_error"))
    events = checked_events(out)
    failed, error = events[-2], events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error", "message": "upstream vllm-a failed mid-stream: reset"}
    # What was produced so far, the cut item marked incomplete.
    assert [(o["type"], o["status"]) for o in failed["response"]["output"]] == [
        ("message", "completed"), ("function_call", "incomplete")]
    assert error["type"] == "error" and error["code"] == "upstream_stream_error"
    assert error["message"] == "upstream vllm-a failed mid-stream: reset"
    assert tr.finish() == b"" and tr.error_event(UpstreamError("again")) == b""


def test_failure_before_any_chunk_still_opens_the_response() -> None:
    tr = CODEC.stream(responses_call(NATIVE, stream=True))
    events = checked_events(tr.error_event(ServiceUnavailable("shutting down")))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress",
                                           "response.failed", "error"]


def test_rate_limit_keeps_its_code_in_response_failed() -> None:
    tr, head = _cut("stream_text.chat.sse", 3)
    events = checked_events(head + tr.error_event(RateLimited("slow down")))
    assert events[-2]["response"]["error"]["code"] == "rate_limit_exceeded"


def _failed_stream() -> bytes:
    tr, head = _cut("stream_text.chat.sse", 6)
    return head + tr.error_event(UpstreamError("upstream vllm-a ended the stream early",
                                               code="upstream_stream_truncated"))


def test_sdk_raw_stream_raises_on_a_failure() -> None:
    client = sdk_client(_failed_stream(), stream=True)
    seen = []
    with pytest.raises(openai.APIError) as e:
        for event in client.responses.create(model="llama-public", input="x", stream=True):
            seen.append(event.type)
    assert "ended the stream early" in e.value.message
    assert seen[-1] == "response.failed"  # the SDK hands it over, then raises on `error`


def test_sdk_stream_helper_raises_on_a_failure() -> None:
    client = sdk_client(_failed_stream(), stream=True)
    with pytest.raises(openai.APIError) as e, \
            client.responses.stream(model="llama-public", input="x") as stream:
        stream.get_final_response()
    assert "ended the stream early" in e.value.message
    body: Any = e.value.body
    assert body["code"] == "upstream_stream_truncated"


def test_stateless_error_event_also_makes_the_sdk_raise() -> None:
    # A native stream whose translator has no error_event of its own ends with this one.
    head = (b'event: response.created\ndata: ' + json.dumps({
        "type": "response.created", "sequence_number": 0,
        "response": CODEC_RESPONSE}).encode() + b"\n\n")
    out = head + CODEC.error_event(UpstreamError("gone", code="upstream_stream_error"))
    with pytest.raises(openai.APIError, match="gone"):
        list(sdk_client(out, stream=True).responses.create(model="m", input="x", stream=True))


CODEC_RESPONSE = {"id": RESPONSE_ID, "object": "response", "created_at": 0, "model": "m",
                  "output": [], "parallel_tool_calls": True, "tool_choice": "auto",
                  "tools": [], "status": "in_progress"}
