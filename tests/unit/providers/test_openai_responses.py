"""The Responses API passed through natively (OpenAI, Azure, vLLM): request building with the
conversation, id and model rewriting, usage, the stream pass-through and how it ends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.accounting.usage import Usage
from gateway.call import Call, Conversation
from gateway.errors import UpstreamError
from gateway.policy.models import AzureProvider, Deployment, LocalProvider, OpenAIProvider
from gateway.providers.azure import AzureAdapter
from gateway.providers.base import ErrorKind, Target
from gateway.providers.openai_compat import OpenAICompatAdapter
from gateway.providers.openai_responses import ResponsesPassThrough
from tests.unit.providers.golden import check, feed_in_pieces, load, read, sse_events

GATEWAY_ID = "resp_0123456789abcdef0123456789abcdef"
UPSTREAM_ID = "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41"
SNAPSHOT = "gpt-5-mini-2025-08-07"
HISTORY = [{"type": "message", "role": "user", "content": "My name is Ada."},
           {"id": "msg_old", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}]}]


def openai(kind: str = "openai", **kw: Any) -> OpenAICompatAdapter:
    return OpenAICompatAdapter("up", OpenAIProvider(kind=kind, base_url="http://up/v1",
                                                    api_key="sk-secret-key-123", **kw))


def azure(version: str = "v1", **kw: Any) -> AzureAdapter:
    return AzureAdapter("az", AzureProvider(kind="azure", base_url="https://res.openai.azure.com",
                                            api_key="azure-key-0123456789", api_version=version,
                                            **kw))


def target(model: str = "gpt-5-mini", provider: str = "up") -> Target:
    return Target("gpt", Deployment(provider=provider, model=model), provider)


def call(stream: bool = False, conversation: Conversation | None = None,
         **body: Any) -> Call:
    b: dict[str, Any] = {"model": "gpt", "input": "What is my name?", **body}
    if stream:
        b["stream"] = True
    raw = json.dumps(b).encode()
    return Call("chat", "gpt", {"model": "gpt", "messages": []}, b"{}", stream, "rid",
                ingress="responses", native_body=b, native_raw=raw, response_id=GATEWAY_ID,
                conversation=conversation)


# ---- which backends take it natively -----------------------------------------------------------

@pytest.mark.parametrize(("adapter", "native"), [
    (lambda: openai("openai"), True),
    (lambda: openai("openai", supports_responses=False), False),
    (lambda: openai("openai-compatible"), False),
    (lambda: openai("vllm"), False),
    (lambda: openai("vllm", supports_responses=True), True),
    (lambda: OpenAICompatAdapter("loc", LocalProvider(kind="local")), False),
    (lambda: azure("v1"), True),
    (lambda: azure("preview"), True),
    (lambda: azure("2025-04-01-preview"), True),
    (lambda: azure("2024-10-21"), False),
    (lambda: azure("2024-10-21", supports_responses=True), True),
    (lambda: azure("v1", supports_responses=False), False),
])
def test_native_ingresses_follow_supports_responses(adapter: Any, native: bool) -> None:
    a = adapter()
    assert ("responses" in a.native_ingresses) is native
    assert "anthropic" not in a.native_ingresses


@pytest.mark.parametrize(("version", "url"), [
    ("v1", "https://res.openai.azure.com/openai/v1/responses"),
    ("preview", "https://res.openai.azure.com/openai/v1/responses?api-version=preview"),
    ("2025-04-01-preview",
     "https://res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"),
])
def test_azure_responses_urls(version: str, url: str) -> None:
    req = azure(version).build_request(call(), target("gpt5-prod", "az"), True)
    assert req.url == url
    assert req.headers["api-key"] == "azure-key-0123456789"
    assert json.loads(req.body)["model"] == "gpt5-prod"


# ---- requests ------------------------------------------------------------------------------------

def test_request_passes_the_clients_bytes_when_nothing_changes() -> None:
    c = call(tools=[{"type": "function", "name": "f", "parameters": {}}])
    req = openai().build_request(c, target("gpt"), True)
    assert req.body is c.native_raw
    assert req.url == "http://up/v1/responses"
    assert req.headers["Authorization"] == "Bearer sk-secret-key-123"


def test_request_not_native_goes_to_chat_with_the_translation() -> None:
    c = call()
    req = openai("vllm").build_request(c, target("gpt"), False)
    assert req.url == "http://up/v1/chat/completions" and req.body is c.raw


CONVERSATIONS: list[tuple[str, Conversation | None, dict[str, Any], dict[str, Any]]] = [
    ("rename only", None, {}, {"model": "gpt-5-mini", "input": "What is my name?"}),
    ("this provider served the last turn: its own id",
     Conversation(list(HISTORY), "resp_gateway_prev", {"up": "resp_upstream_prev"}),
     {"previous_response_id": "resp_gateway_prev"},
     {"model": "gpt-5-mini", "input": "What is my name?",
      "previous_response_id": "resp_upstream_prev"}),
    ("another provider served it: the history, string input as a user message",
     Conversation(list(HISTORY), "resp_gateway_prev", {"other": "resp_elsewhere"}),
     {"previous_response_id": "resp_gateway_prev"},
     {"model": "gpt-5-mini", "input": [*HISTORY, {"type": "message", "role": "user",
                                                  "content": "What is my name?"}]}),
    ("served by translation: the history before the input items",
     Conversation(list(HISTORY), "resp_gateway_prev"),
     {"previous_response_id": "resp_gateway_prev",
      "input": [{"role": "user", "content": [{"type": "input_text", "text": "And now?"}]}]},
     {"model": "gpt-5-mini", "input": [*HISTORY, {"role": "user", "content": [
         {"type": "input_text", "text": "And now?"}]}]}),
]


@pytest.mark.parametrize(("case", "conv", "body", "expected"), CONVERSATIONS,
                         ids=[c[0] for c in CONVERSATIONS])
def test_request_maps_model_and_conversation(case: str, conv: Conversation | None,
                                             body: dict[str, Any],
                                             expected: dict[str, Any]) -> None:
    c = call(conversation=conv, **body)
    sent = json.loads(openai().build_request(c, target(), True).body)
    assert sent == expected
    assert c.native_body is not None and c.native_body.get("model") == "gpt"  # not mutated


def test_request_with_a_conversation_is_rebuilt_even_under_the_public_name() -> None:
    c = call(conversation=Conversation(list(HISTORY), "resp_gateway_prev"),
             previous_response_id="resp_gateway_prev")
    sent = json.loads(openai().build_request(c, target("gpt"), True).body)
    assert "previous_response_id" not in sent and sent["input"][:2] == HISTORY


# ---- replies -------------------------------------------------------------------------------------

def test_reply_golden_rewrites_the_id_and_model_only() -> None:
    c = call()
    body = read("openai_responses/reply_reasoning_text_tool.json")
    reply = openai().parse_reply(c, target(SNAPSHOT), body, True)
    out = json.loads(reply.body)
    assert out["id"] == GATEWAY_ID and out["model"] == "gpt"
    # Output item ids are the upstream's own, untouched; everything else as it came.
    upstream = load("openai_responses/reply_reasoning_text_tool.json")
    assert out["output"] == upstream["output"]
    assert {k: v for k, v in out.items() if k not in ("id", "model")} == \
        {k: v for k, v in upstream.items() if k not in ("id", "model")}
    assert reply.usage == Usage(input_uncached=72, cache_read=256, output=20, reasoning=64)
    assert c.upstream_response_id == UPSTREAM_ID
    assert c.final_response == out


def test_reply_renames_a_dated_snapshot_but_not_a_tools_own_model() -> None:
    obj = {"id": UPSTREAM_ID, "object": "response", "model": SNAPSHOT, "status": "completed",
           "tools": [{"type": "image_generation", "model": "gpt-image-1"}], "output": []}
    out = json.loads(openai().parse_reply(call(), target(), json.dumps(obj).encode(), True).body)
    assert out["model"] == "gpt" and out["tools"][0]["model"] == "gpt-image-1"


@pytest.mark.parametrize(("conv", "echoed"), [
    (Conversation([], "resp_gateway_prev", {"up": "resp_upstream_prev"}), "resp_upstream_prev"),
    (Conversation([], "resp_gateway_prev", {}), None),
])
def test_reply_echoes_the_gateways_previous_id(conv: Conversation, echoed: str | None) -> None:
    obj = {"id": UPSTREAM_ID, "object": "response", "model": "gpt-5-mini",
           "previous_response_id": echoed, "output": []}
    for text in (json.dumps(obj), json.dumps(obj, indent=2)):
        c = call(conversation=conv, previous_response_id="resp_gateway_prev")
        out = json.loads(openai().parse_reply(c, target(), text.encode(), True).body)
        assert out["previous_response_id"] == "resp_gateway_prev"
        assert c.final_response is not None
        assert c.final_response["previous_response_id"] == "resp_gateway_prev"


def test_reply_that_is_not_a_response_object_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        openai().parse_reply(call(), target(), b"<html>bad gateway</html>", True)


def test_azure_reply_names_the_public_model() -> None:
    obj = {"id": UPSTREAM_ID, "object": "response", "model": "gpt-5-2025-08-07", "output": []}
    out = json.loads(azure().parse_reply(call(), target("gpt5-prod", "az"),
                                         json.dumps(obj).encode(), True).body)
    assert out == {**obj, "id": GATEWAY_ID, "model": "gpt"}


# ---- streams -------------------------------------------------------------------------------------

STREAM = "openai_responses/stream_reasoning_text_tool.sse"


def stream(c: Call | None = None, adapter: OpenAICompatAdapter | None = None,
           t: Target | None = None) -> ResponsesPassThrough:
    tr = (adapter or openai()).stream(c or call(stream=True), t or target(SNAPSHOT), True)
    assert isinstance(tr, ResponsesPassThrough)
    return tr


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_stream_golden_reasoning_text_and_tool_call(piece: int) -> None:
    c = call(stream=True)
    tr = stream(c)
    out = feed_in_pieces(tr, read(STREAM), piece)
    assert tr.done and tr.error is None
    assert tr.usage == Usage(input_uncached=72, cache_read=256, output=20, reasoning=64)
    assert tr.chunks == 10
    events = sse_events(out)
    check("openai_responses/stream_reasoning_text_tool.expected.json", events)
    # Every event as it came but for the response's id and model, which are the gateway's.
    upstream = sse_events(read(STREAM))
    assert [e[1]["sequence_number"] for e in events] == list(range(len(upstream)))
    assert b"resp_67ccd3a9" not in out and SNAPSHOT.encode() not in out
    assert c.upstream_response_id == UPSTREAM_ID
    assert c.final_response == events[-1][1]["response"]
    assert c.final_response["id"] == GATEWAY_ID and c.final_response["model"] == "gpt"


def _events(data: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


def test_stream_holds_lifecycle_events_until_output_and_the_end_until_finish() -> None:
    events = _events(read(STREAM))
    tr = stream()
    assert tr.feed(events[0] + events[1]) == b""  # created, in_progress: held
    first = tr.feed(events[2])  # the first output item releases them, in order
    assert [e[0] for e in sse_events(first)] == ["response.created", "response.in_progress",
                                                 "response.output_item.added"]
    middle = tr.feed(b"".join(events[3:]))
    assert tr.done and b"response.completed" not in middle
    assert [e[0] for e in sse_events(tr.finish())] == ["response.completed"]


def test_stream_without_event_lines_reads_the_type_from_data() -> None:
    # vLLM-style: `data:` only, `type` last in the object.
    plain = b"".join(b"data: " + json.dumps({**{k: v for k, v in e[1].items() if k != "type"},
                                             "type": e[1]["type"]}).encode() + b"\n\n"
                     for e in sse_events(read(STREAM)))
    c = call(stream=True)
    tr = stream(c)
    out = feed_in_pieces(tr, plain, 13)
    assert tr.done and tr.usage is not None and tr.usage.reasoning == 64
    assert b"resp_67ccd3a9" not in out and c.final_response is not None


def _lifecycle(kind: str, seq: int, **response: Any) -> bytes:
    obj = {"type": kind, "sequence_number": seq,
           "response": {"id": UPSTREAM_ID, "object": "response", "model": SNAPSHOT,
                        "status": "in_progress", "output": [], **response}}
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def _typed(kind: str, seq: int, **fields: Any) -> bytes:
    obj = {"type": kind, "sequence_number": seq, **fields}
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


@pytest.mark.parametrize(("code", "kind", "status"), [
    ("server_error", ErrorKind.RETRYABLE, 500),
    ("rate_limit_exceeded", ErrorKind.RETRYABLE, 429),
    (None, ErrorKind.RETRYABLE, 500),
    ("invalid_prompt", ErrorKind.CLIENT, 400),
    ("invalid_image_url", ErrorKind.CLIENT, 400),
])
def test_stream_failed_before_output_is_an_error_not_forwarded(code: str | None,
                                                               kind: ErrorKind,
                                                               status: int) -> None:
    tr = stream()
    out = tr.feed(_lifecycle("response.created", 0) + _lifecycle(
        "response.failed", 1, status="failed", error={"code": code, "message": "it broke"}))
    assert out == b""
    assert tr.error is not None
    assert (tr.error.kind, tr.error.status, tr.error.message) == (kind, status, "it broke")


def test_stream_error_event_before_output_falls_back() -> None:
    tr = stream()
    out = tr.feed(_lifecycle("response.created", 0) + _typed(
        "error", 1, code="rate_limit_exceeded", message="Slow down", param=None))
    assert out == b"" and tr.error is not None and tr.error.kind is ErrorKind.RETRYABLE


def test_stream_error_event_nested_error_object_is_read() -> None:
    tr = stream()
    tr.feed(_lifecycle("response.created", 0) + _typed(
        "error", 1, error={"type": "invalid_request_error", "code": "context_length_exceeded",
                           "message": "Your input exceeds the context window of this model."}))
    assert tr.error is not None and tr.error.kind is ErrorKind.CONTEXT_LENGTH


def test_stream_failed_after_output_passes_through_as_the_end() -> None:
    c = call(stream=True)
    tr = stream(c)
    events = _events(read(STREAM))
    tr.feed(b"".join(events[:8]))
    failed = _lifecycle("response.failed", 8, status="failed",
                        error={"code": "server_error", "message": "The model failed."})
    tr.feed(failed)
    assert tr.done and tr.error is None
    end = sse_events(tr.finish())
    assert [e[0] for e in end] == ["response.failed"]
    assert end[0][1]["response"]["id"] == GATEWAY_ID
    assert c.final_response is not None and c.final_response["status"] == "failed"


def test_stream_incomplete_is_an_end_with_usage() -> None:
    c = call(stream=True)
    tr = stream(c)
    events = _events(read(STREAM))
    usage = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
    tr.feed(b"".join(events[:8]) + _lifecycle(
        "response.incomplete", 8, status="incomplete", usage=usage,
        incomplete_details={"reason": "max_output_tokens"}))
    assert tr.done and tr.usage == Usage(input_uncached=10, output=4)
    assert [e[0] for e in sse_events(tr.finish())] == ["response.incomplete"]
    assert c.final_response is not None and c.final_response["status"] == "incomplete"


@pytest.mark.parametrize("split", ["one batch (fast path)", "event by event"])
def test_error_event_continues_the_sequence_numbers(split: str) -> None:
    from gateway.errors import UpstreamError as Err

    tr = stream()
    events = _events(read(STREAM))
    if split == "event by event":
        for e in events[:9]:
            tr.feed(e)
    else:
        tr.feed(b"".join(events[:3]))
        tr.feed(b"".join(events[3:9]))  # deltas only: passed through unparsed
    assert tr.last_sequence_number() == 8 and tr.chunks == 3
    ending = sse_events(tr.error_event(Err("upstream up failed mid-stream: reset",
                                           code="upstream_stream_error")))
    assert [(e[0], e[1]["type"], e[1]["sequence_number"]) for e in ending] == [
        ("response.failed", "response.failed", 9), ("error", "error", 10)]
    failed = ending[0][1]["response"]
    assert failed["id"] == GATEWAY_ID and failed["model"] == "gpt"
    assert failed["status"] == "failed" and "output" not in failed
    assert ending[1][1]["code"] == "upstream_stream_error"


def test_error_event_mid_stream_stops_it() -> None:
    tr = stream()
    events = _events(read(STREAM))
    tr.feed(b"".join(events[:6]))
    out = tr.feed(events[6] + _typed("error", 7, code="server_error", message="boom",
                                     param=None) + events[7])
    assert out == b"" and tr.error is not None and tr.error.kind is ErrorKind.RETRYABLE
    assert not tr.done
    # That batch never reaches the client: the ending numbers on from the one before.
    assert tr.last_sequence_number() == 5


def test_stream_rewrites_the_echoed_previous_id() -> None:
    conv = Conversation([], "resp_gateway_prev", {"up": "resp_upstream_prev"})
    tr = stream(call(stream=True, conversation=conv, previous_response_id="resp_gateway_prev"))
    out = tr.feed(_lifecycle("response.created", 0, previous_response_id="resp_upstream_prev")
                  + _typed("response.output_item.added", 1, output_index=0,
                           item={"id": "msg_1", "type": "message", "content": []}))
    created = sse_events(out)[0][1]["response"]
    assert created["previous_response_id"] == "resp_gateway_prev"
    assert created["id"] == GATEWAY_ID


def test_azure_stream_names_the_public_model() -> None:
    c = call(stream=True)
    tr = stream(c, azure(), target("gpt5-prod", "az"))
    out = feed_in_pieces(tr, read(STREAM))
    assert SNAPSHOT.encode() not in out
    assert all(e[1]["response"]["model"] == "gpt" for e in sse_events(out)
               if "response" in e[1])
