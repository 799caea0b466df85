"""Gemini adapter: OpenAI → GenerateContentRequest, replies and `alt=sse` streams → OpenAI,
embeddings, and error classification."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from gateway.accounting.usage import Usage
from gateway.errors import InvalidRequest
from gateway.policy.models import Deployment, GeminiProvider
from gateway.providers.base import ErrorKind, Target
from gateway.providers.gemini import GeminiAdapter, to_gemini_request
from tests.unit.providers.golden import call, check, feed_in_pieces, load, read, sse_events

KEY = "AIzaSyA-SECRETSECRETSECRETSECRET12345"
TARGET = Target("gemini", Deployment(provider="g", model="gemini-2.5-flash"), "g")


def adapter(base_url: str = "") -> GeminiAdapter:
    return GeminiAdapter("g", GeminiProvider(kind="gemini", base_url=base_url, api_key=KEY))


def test_request_golden_system_images_tools_and_function_responses() -> None:
    body = load("gemini/chat_tools.request.json")
    req = adapter().build_request(call(body), TARGET, native=False)
    assert req.url == ("https://generativelanguage.googleapis.com/v1beta/models/"
                       "gemini-2.5-flash:generateContent")
    assert req.headers["x-goog-api-key"] == KEY
    assert KEY not in req.url  # never in the URL: URLs reach logs
    check("gemini/chat_tools.expected.json", json.loads(req.body))


def test_stream_request_uses_sse() -> None:
    req = adapter("http://h:1/v1beta/").build_request(
        call({"messages": [{"role": "user", "content": "x"}]}, stream=True),
        Target("g", Deployment(provider="g", model="models/gemini-x"), "g"), False)
    assert req.url == "http://h:1/v1beta/models/gemini-x:streamGenerateContent?alt=sse"


def test_consecutive_turns_merge_and_roles_are_user_and_model() -> None:
    out = to_gemini_request({"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"}, {"role": "assistant", "content": ""},
    ]})
    assert out["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                               {"role": "model", "parts": [{"text": "c"}]}]


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "f"}},
     {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
def test_tool_choice_mapping(choice: Any, config: Any) -> None:
    out = to_gemini_request({"messages": [{"role": "user", "content": "x"}],
                             "tools": [{"type": "function", "function": {"name": "f"}}],
                             "tool_choice": choice})
    assert out["toolConfig"] == {"functionCallingConfig": config}
    assert out["tools"] == [{"functionDeclarations": [{"name": "f", "description": ""}]}]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0]"),
])
def test_untranslatable_requests_are_client_errors(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        to_gemini_request(body)
    assert e.value.param == param


def test_reply_golden_thoughts_text_function_calls_and_usage() -> None:
    reply = adapter().parse_reply(call({"model": "gemini"}), TARGET,
                                  read("gemini/reply_function_call.json"), False)
    # promptTokenCount includes the cached tokens; thoughts are counted apart from candidates.
    assert reply.usage == Usage(input_uncached=20, cache_read=100, output=30, reasoning=40)
    out = json.loads(reply.body)
    assert out["usage"] == {"prompt_tokens": 120, "completion_tokens": 70, "total_tokens": 190,
                            "prompt_tokens_details": {"cached_tokens": 100},
                            "completion_tokens_details": {"reasoning_tokens": 40}}
    check("gemini/reply_function_call.expected.json", out)


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("OTHER", "stop"),
])
def test_finish_reason_mapping(reason: str, finish: str) -> None:
    resp = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"},
                            "finishReason": reason, "index": 0}]}
    out = json.loads(adapter().parse_reply(call({"model": "g"}), TARGET,
                                           json.dumps(resp).encode(), False).body)
    assert out["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_is_a_content_filter_finish() -> None:
    resp = {"promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}
    reply = adapter().parse_reply(call({"model": "g"}), TARGET, json.dumps(resp).encode(), False)
    out = json.loads(reply.body)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert reply.usage == Usage(input_uncached=8)


@pytest.mark.parametrize("piece", [1, 9, 100_000])
def test_stream_golden_text_then_parallel_function_calls(piece: int) -> None:
    tr = adapter().stream(call({"model": "gemini"}, stream=True, include_usage=True), TARGET,
                          False)
    out = feed_in_pieces(tr, read("gemini/stream_function_call.sse"), piece)
    assert tr.done and tr.error is None
    assert tr.usage == Usage(input_uncached=52, output=12, reasoning=8)
    check("gemini/stream_function_call.expected.json", sse_events(out))


def test_stream_error_event_is_classified() -> None:
    tr = adapter().stream(call({"model": "g"}, stream=True), TARGET, False)
    err = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    assert tr.feed(b"data: " + json.dumps(err).encode() + b"\r\n\r\n") == b""
    assert tr.error is not None and tr.error.kind is ErrorKind.RETRYABLE
    assert tr.error.status == 503


def test_embeddings_request_and_base64_reply() -> None:
    c = call({"model": "emb", "input": ["a", "b"], "dimensions": 2,
              "encoding_format": "base64"}, endpoint="embeddings")
    req = adapter().build_request(c, Target("emb", Deployment(provider="g", model="text-emb"),
                                            "g"), False)
    assert req.url.endswith("/models/text-emb:batchEmbedContents")
    assert json.loads(req.body) == {"requests": [
        {"model": "models/text-emb", "content": {"parts": [{"text": "a"}]},
         "outputDimensionality": 2},
        {"model": "models/text-emb", "content": {"parts": [{"text": "b"}]},
         "outputDimensionality": 2}]}
    resp = {"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]}
    out = json.loads(adapter().parse_reply(c, TARGET, json.dumps(resp).encode(), False).body)
    vec = struct.unpack("<2f", base64.b64decode(out["data"][1]["embedding"]))
    assert vec == (0.25, 2.0) and out["model"] == "emb"


def _err(code: int, status: str, message: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status,
                                 **extra}}).encode()


@pytest.mark.parametrize(("status", "body", "kind"), [
    (429, _err(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
     ErrorKind.RETRYABLE),
    (500, _err(500, "INTERNAL", "An internal error has occurred."), ErrorKind.RETRYABLE),
    (503, _err(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
     ErrorKind.RETRYABLE),
    (504, _err(504, "DEADLINE_EXCEEDED", "Deadline exceeded"), ErrorKind.RETRYABLE),
    (400, _err(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum "
                                        "number of tokens allowed (1048576)."),
     ErrorKind.CONTEXT_LENGTH),
    (400, _err(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
               details=[{"reason": "API_KEY_INVALID"}]), ErrorKind.CONFIG),
    (400, _err(400, "INVALID_ARGUMENT", "Please use a valid role: user, model."),
     ErrorKind.CLIENT),
    (403, _err(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"),
     ErrorKind.CONFIG),
    (401, _err(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
     ErrorKind.CONFIG),
    (404, _err(404, "NOT_FOUND", "models/nope is not found for API version v1beta"),
     ErrorKind.CLIENT),
])
def test_classification_table(status: int, body: bytes, kind: ErrorKind) -> None:
    c = adapter().classify(status, body, {})
    assert c.kind is kind and c.status == status and c.message


def test_retry_info_and_key_scrubbing() -> None:
    body = _err(429, "RESOURCE_EXHAUSTED",
                f"Quota exceeded for key {KEY}; see https://10.0.0.4:8080/quota?key={KEY}",
                details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                          "retryDelay": "37s"}])
    c = adapter().classify(429, body, {})
    assert c.retry_after == 37.0
    assert KEY not in c.message and "10.0.0.4" not in c.message
    # A JSON-array error body (streamGenerateContent without alt=sse) reads the same.
    assert adapter().classify(429, b"[" + body + b"]", {}).retry_after == 37.0
