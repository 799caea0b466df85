"""The OpenAI-compatible pass-through: request rewriting, usage reading and stripping."""

from __future__ import annotations

import json

import pytest

from gateway.accounting.usage import Usage
from gateway.call import Call
from gateway.policy.models import Deployment, OpenAIProvider
from gateway.providers.base import ErrorKind, Target
from gateway.providers.openai_compat import OpenAICompatAdapter


def adapter(kind: str = "openai", **kw: object) -> OpenAICompatAdapter:
    cfg = OpenAIProvider(kind=kind, base_url="http://up/v1", api_key="sk-secret-key-123", **kw)
    return OpenAICompatAdapter("up", cfg)


def call(stream: bool = False, include_usage: bool = False, **body: object) -> Call:
    b = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **body}
    if stream:
        b["stream"] = True
    if include_usage:
        b["stream_options"] = {"include_usage": True}
    raw = json.dumps(b).encode()
    return Call("chat", "chat", b, raw, stream, "rid", client_include_usage=include_usage)


TARGET = Target("chat", Deployment(provider="up", model="llama-up"), "up")
SAME = Target("chat", Deployment(provider="up", model="chat"), "up")


def sse(*objs: object) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n"
                    for o in objs)


def chunk(content: str | None, usage: object = "absent", model: str = "llama-up") -> dict:
    d: dict = {"id": "c", "object": "chat.completion.chunk", "model": model,
               "choices": [] if content is None else [{"index": 0, "delta": {"content": content},
                                                       "finish_reason": None}]}
    if usage != "absent":
        d["usage"] = usage
    return d


U = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
     "prompt_tokens_details": {"cached_tokens": 3},
     "completion_tokens_details": {"reasoning_tokens": 1}}


def test_request_passes_raw_bytes_when_nothing_changes() -> None:
    c = call()
    req = adapter().build_request(c, SAME, False)
    assert req.body is c.raw
    assert req.url == "http://up/v1/chat/completions"
    assert req.headers["Authorization"] == "Bearer sk-secret-key-123"


def test_request_rewrites_model_and_asks_for_stream_usage() -> None:
    req = adapter().build_request(call(stream=True, temperature=0.2), TARGET, False)
    body = json.loads(req.body)
    assert body["model"] == "llama-up" and body["temperature"] == 0.2
    assert body["stream_options"] == {"include_usage": True}


def test_vllm_gets_continuous_usage_stats() -> None:
    req = adapter("vllm").build_request(call(stream=True), TARGET, False)
    assert json.loads(req.body)["stream_options"] == {"include_usage": True,
                                                      "continuous_usage_stats": True}


def test_no_stream_options_for_upstreams_without_support() -> None:
    req = adapter(supports_stream_usage=False).build_request(call(stream=True), SAME, False)
    assert "stream_options" not in json.loads(req.body)


def test_reply_usage_buckets_and_model_rename() -> None:
    body = json.dumps({"id": "x", "model": "llama-up", "choices": [], "usage": U}).encode()
    r = adapter().parse_reply(call(), TARGET, body, False)
    assert json.loads(r.body)["model"] == "chat"
    assert r.usage == Usage(input_uncached=7, cache_read=3, output=3, reasoning=1)


@pytest.mark.parametrize("include", [False, True])
def test_stream_usage_chunk_hidden_unless_asked(include: bool) -> None:
    s = adapter().stream(call(stream=True, include_usage=include), TARGET, False)
    raw = sse(chunk("a", None), chunk("b", None), chunk(None, U), b"[DONE]")
    out = b"".join(s.feed(raw[i:i + 7]) for i in range(0, len(raw), 7)) + s.finish()
    events = [e for e in out.split(b"\n\n") if e]
    assert s.done and s.usage == Usage(input_uncached=7, cache_read=3, output=3, reasoning=1)
    assert events[-1] == b"data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all(p["model"] == "chat" for p in payloads)
    if include:
        assert payloads[-1]["usage"] == U and payloads[0]["usage"] is None
    else:
        assert len(payloads) == 2 and all("usage" not in p for p in payloads)


def test_usage_on_last_content_chunk_is_read_and_stripped() -> None:
    s = adapter().stream(call(stream=True), TARGET, False)
    out = s.feed(sse(chunk("a"), chunk("b", U), b"[DONE]"))
    payloads = [json.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert [p["choices"][0]["delta"]["content"] for p in payloads] == ["a", "b"]
    assert all("usage" not in p for p in payloads)
    assert s.usage is not None and s.usage.total == 14


def test_in_stream_error_event_is_classified_not_forwarded() -> None:
    s = adapter().stream(call(stream=True), SAME, False)
    out = s.feed(sse(chunk("a", model="chat"), {"error": {"message": "boom", "type": "x"}}))
    assert b"boom" not in out and s.error is not None
    assert s.error.kind is ErrorKind.RETRYABLE


@pytest.mark.parametrize(("status", "body", "kind"), [
    (429, b'{"error": {"message": "slow down"}}', ErrorKind.RETRYABLE),
    (503, b"upstream unavailable", ErrorKind.RETRYABLE),
    (408, b"", ErrorKind.RETRYABLE),
    (401, b'{"error": {"message": "bad key sk-secret-key-123"}}', ErrorKind.CONFIG),
    (400, b'{"error": {"message": "bad", "code": "context_length_exceeded"}}',
     ErrorKind.CONTEXT_LENGTH),
    (400, b'{"object": "error", "message": "This model\'s maximum context length is 4096 '
          b'tokens", "type": "BadRequestError", "code": 400}', ErrorKind.CONTEXT_LENGTH),
    (400, b'{"error": {"message": "messages is required"}}', ErrorKind.CLIENT),
    (404, b'{"error": {"message": "no such model"}}', ErrorKind.CLIENT),
    (422, b'{"detail": "invalid"}', ErrorKind.CLIENT),
])
def test_classification(status: int, body: bytes, kind: ErrorKind) -> None:
    c = adapter().classify(status, body, {"retry-after": "3"})
    assert c.kind is kind
    assert "sk-secret-key-123" not in c.message
    assert c.retry_after == 3.0


def role_chunk(**extra: object) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "model": "llama-up",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}], **extra}


def delta_chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "model": "llama-up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_role_chunk_is_held_until_content_then_released_in_order() -> None:
    s = adapter().stream(call(stream=True), TARGET, False)
    empty = delta_chunk({"content": "", "refusal": None, "tool_calls": []})
    # Until content exists nothing reaches the client, so an upstream that drops here can
    # still be replaced by the next deployment.
    assert s.feed(sse(role_chunk())) == b""
    assert s.feed(b": keep-alive\n\n" + sse(empty)) == b""
    assert not s.done and s.error is None
    out = s.feed(sse(chunk("Hi")))
    events = [e for e in out.split(b"\n\n") if e]
    assert events[1] == b": keep-alive"
    deltas = [json.loads(e[6:])["choices"][0]["delta"] for e in (events[0], *events[2:])]
    assert deltas == [{"role": "assistant", "content": ""}, empty["choices"][0]["delta"],
                      {"content": "Hi"}]
    # Once content flows, chunks pass through as the bytes they came in (model renamed).
    later = sse(chunk("there"))
    assert s.feed(later) == later.replace(b'"llama-up"', b'"chat"')


@pytest.mark.parametrize("first", [
    delta_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "f", "arguments": ""}}]}),
    delta_chunk({"reasoning_content": "thinking"}),
    delta_chunk({"refusal": "no"}),
    delta_chunk({}, finish="stop"),
    {"id": "c", "object": "text_completion", "model": "llama-up",
     "choices": [{"index": 0, "text": "Hi", "finish_reason": None}]},
], ids=["tool_call", "reasoning", "refusal", "finish_reason", "completions_text"])
def test_held_frames_are_released_by_any_real_delta(first: dict) -> None:
    s = adapter().stream(call(stream=True), TARGET, False)
    assert s.feed(sse(role_chunk())) == b""
    events = [json.loads(e[6:]) for e in s.feed(sse(first)).split(b"\n\n") if e]
    assert len(events) == 2
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[1]["choices"] == first["choices"]


def test_done_releases_a_stream_without_content() -> None:
    s = adapter().stream(call(stream=True), TARGET, False)
    assert s.feed(sse(role_chunk())) == b""
    out = s.feed(sse(b"[DONE]"))
    assert s.done and out.endswith(b"data: [DONE]\n\n") and out.count(b"data: ") == 2


def test_error_after_the_role_chunk_is_classified_and_nothing_is_released() -> None:
    s = adapter().stream(call(stream=True), TARGET, False)
    out = s.feed(sse(role_chunk(), {"error": {"message": "overloaded", "type": "x"}}))
    assert out == b"" and s.error is not None and s.error.kind is ErrorKind.RETRYABLE


def test_held_vllm_role_chunk_has_our_usage_request_stripped() -> None:
    s = adapter("vllm").stream(call(stream=True), TARGET, False)
    assert s.feed(sse(role_chunk(usage=U))) == b""
    out = s.feed(sse(chunk("Hi", U)))
    payloads = [json.loads(e[6:]) for e in out.split(b"\n\n") if e]
    assert len(payloads) == 2 and all("usage" not in p for p in payloads)
    assert s.usage is not None and s.usage.total == 14


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("spacing", [b'"choices":[]', b'"choices": []'])
def test_chunk_with_empty_choices_that_is_not_usage_never_reaches_the_client(
        include: bool, spacing: bytes) -> None:
    s = adapter().stream(call(stream=True, include_usage=include), TARGET, False)
    odd = b'{"id":"c","object":"chat.completion.chunk","model":"llama-up",' + spacing + b"}"
    raw = sse(chunk("a", None), odd, chunk("b", None), odd, chunk(None, U), b"[DONE]")
    out = b"".join(s.feed(raw[i:i + 9]) for i in range(0, len(raw), 9)) + s.finish()
    payloads = [json.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
    with_choices = [p for p in payloads if p["choices"]]
    assert [p["choices"][0]["delta"]["content"] for p in with_choices] == ["a", "b"]
    # The only chunk without a choice is the usage chunk, and only when the client asked.
    assert [p.get("usage") for p in payloads if not p["choices"]] == ([U] if include else [])


def compact(o: dict) -> bytes:
    """As OpenAI writes it: no spaces (`"usage":null` on every chunk once include_usage is on)."""
    return b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n"


@pytest.mark.parametrize("include", [False, True])
def test_openai_null_usage_on_every_chunk_is_dropped_as_bytes_unless_asked(
        include: bool) -> None:
    s = adapter().stream(call(stream=True, include_usage=include), SAME, False)
    # The first content is parsed (frames before it are held); from then on, bytes.
    assert ("usage" in json.loads(s.feed(compact(chunk("a", None, model="chat")))[6:])) is include
    for text in ("b", "c d", 'say "usage":null'):  # the last: a key's spelling inside content
        raw = compact(chunk(text, None, model="chat"))
        out = s.feed(raw)
        assert out == (raw if include else raw.replace(b',"usage":null', b""))
        assert json.loads(out[6:])["choices"][0]["delta"]["content"] == text
    s.feed(compact(chunk(None, U, model="chat")) + b"data: [DONE]\n\n")
    assert s.done and s.chunks == 4 and s.usage is not None and s.usage.total == 14


def test_null_usage_in_another_place_or_spelling_is_still_dropped_by_the_parse() -> None:
    s = adapter().stream(call(stream=True), SAME, False)
    s.feed(compact(chunk("a", model="chat")))  # content flowing: the fast path from here on
    for raw in (b'data: {"usage":null,"id":"c","model":"chat","choices":[{"index":0,'
                b'"delta":{"content":"b"},"finish_reason":null}]}\n\n',
                sse(chunk("c", None, model="chat"))):
        payload = json.loads(s.feed(raw)[6:])
        assert "usage" not in payload and payload["choices"][0]["delta"]["content"] in "bc"
    assert s.chunks == 3


@pytest.mark.parametrize("target", [TARGET, SAME])
def test_flowing_chunks_split_across_reads_with_crlf_pass_as_sent_but_for_model(
        target: Target) -> None:
    """The fast path: each read's whole events go out as they came, `model` renamed only
    where the deployment's name differs (no rename step at all where it does not)."""
    s = adapter().stream(call(stream=True), target, False)
    model = target.deployment.model
    assert s.feed(sse(chunk("Hi", model=model)))  # the first content releases the stream
    body = b"".join(b"data: " + json.dumps(chunk(t, model=model), ensure_ascii=False).encode()
                    + b"\r\n\r\n" for t in ("é ü", " there"))
    # Split inside the first event, inside a multi-byte character of the second, and
    # between the CR and LF of the blank line that ends it.
    cuts = [7, body.index("ü".encode()) + 1, len(body) - 1]
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b"".join(s.feed(p) for p in parts)
    expected = body.replace(b"\r\n", b"\n")
    if model != "chat":
        expected = expected.replace(b'"llama-up"', b'"chat"')
    assert out == expected
    assert s.chunks == 3 and s.usage is None and not s.done
    s.feed(b"data: [DONE]\r\n\r\n")
    assert s.done
