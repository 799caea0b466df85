"""Azure OpenAI adapter: URL shapes, auth headers, the model rename, inherited classification."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.policy.models import AzureProvider, Deployment
from gateway.providers.azure import AnyModelRename, AzureAdapter
from gateway.providers.base import ErrorKind, Target
from tests.unit.providers.golden import call, feed_in_pieces, sse_events

KEY = "azure-key-0123456789abcdef"
TARGET = Target("gpt-4o", Deployment(provider="az", model="gpt4o-prod"), "az")


def adapter(**kw: Any) -> AzureAdapter:
    cfg = AzureProvider(kind="azure", base_url=kw.pop("base_url", "https://res.openai.azure.com"),
                        api_key=KEY, **kw)
    return AzureAdapter("az", cfg)


@pytest.mark.parametrize(("endpoint", "path"), [
    ("chat", "chat/completions"), ("completions", "completions"), ("embeddings", "embeddings")])
def test_deployment_urls(endpoint: str, path: str) -> None:
    req = adapter().build_request(call({"model": "gpt-4o"}, endpoint=endpoint), TARGET, False)
    assert req.url == (f"https://res.openai.azure.com/openai/deployments/gpt4o-prod/{path}"
                       "?api-version=2024-10-21")
    assert req.headers["api-key"] == KEY and "Authorization" not in req.headers


def test_endpoint_with_openai_suffix_and_v1_api() -> None:
    a = adapter(base_url="https://res.openai.azure.com/openai/", api_version="v1")
    req = a.build_request(call({"model": "gpt-4o", "messages": []}), TARGET, False)
    assert req.url == "https://res.openai.azure.com/openai/v1/chat/completions"
    assert json.loads(req.body)["model"] == "gpt4o-prod"  # v1 names the deployment in the body


def test_entra_token_is_a_bearer() -> None:
    req = adapter(auth="entra").build_request(call({"model": "gpt-4o"}), TARGET, False)
    assert req.headers["Authorization"] == f"Bearer {KEY}" and "api-key" not in req.headers


def test_reply_model_is_the_public_name_not_azures_model_name() -> None:
    body = json.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                       "choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": 'say "model": "x"'},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                 "total_tokens": 5}}).encode()
    reply = adapter().parse_reply(call({"model": "gpt-4o"}), TARGET, body, False)
    out = json.loads(reply.body)
    assert out["model"] == "gpt-4o"
    assert out["choices"][0]["message"]["content"] == 'say "model": "x"'  # content untouched
    assert reply.usage is not None and reply.usage.prompt_tokens == 3


# Azure's first stream chunk, byte for byte as the service sends it (compact JSON).
FILTER_CHUNK = (b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
                b'"prompt_filter_results":[{"prompt_index":0,"content_filter_results":'
                b'{"hate":{"filtered":false,"severity":"safe"}}}]}\n\n')


def azure_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return b"data: " + json.dumps({
        "id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                     "content_filter_results": {}}], **extra}).encode() + b"\n\n"


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("include", [False, True])
def test_stream_folds_the_prompt_filter_chunk_into_the_next_chunk(spaced: bool,
                                                                  include: bool) -> None:
    first = FILTER_CHUNK.replace(b'":', b'": ').replace(b",", b", ") if spaced else FILTER_CHUNK
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    data = (first + azure_chunk({"role": "assistant", "content": ""}, usage=None)
            + azure_chunk({"content": "hi"}, usage=None) + azure_chunk({}, "stop", usage=None)
            + b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk",
                                      "model": "gpt-4o-2024-08-06", "choices": [],
                                      "usage": usage}).encode() + b"\n\n"
            + b"data: [DONE]\n\n")
    tr = adapter().stream(call({"model": "gpt-4o"}, stream=True, include_usage=include),
                          TARGET, False)
    events = sse_events(feed_in_pieces(tr, data))
    chunks = [e[1] for e in events[:-1]]
    # Every chunk but the usage chunk the client asked for has a choice to read.
    assert all(c["choices"] for c in (chunks[:-1] if include else chunks))
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [
        {"role": "assistant", "content": ""}, {"content": "hi"}, {}]
    assert chunks[0]["prompt_filter_results"][0]["prompt_index"] == 0
    assert all("prompt_filter_results" not in c for c in chunks[1:])
    assert all(c["model"] == "gpt-4o" for c in chunks)
    assert len(chunks) == (4 if include else 3)
    assert tr.done and tr.usage is not None and tr.usage.total == 4


def test_rename_handles_escapes_and_spacing() -> None:
    r = AnyModelRename('we\\ird "name"')
    out = r(b'{"model": "a\\"b", "x": {"y": "\\"model\\": \\"keep\\""}}')
    assert json.loads(out) == {"model": 'we\\ird "name"', "x": {"y": '"model": "keep"'}}


@pytest.mark.parametrize(("status", "body", "kind"), [
    (429, {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation "
                     "have exceeded token rate limit. Please retry after 6 seconds."}},
     ErrorKind.RETRYABLE),
    (400, {"error": {"code": "content_filter", "message": "The response was filtered",
                     "param": "prompt", "status": 400}}, ErrorKind.CLIENT),
    (400, {"error": {"code": "context_length_exceeded", "message": "This model's maximum "
                     "context length is 128000 tokens."}}, ErrorKind.CONTEXT_LENGTH),
    (401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key"}},
     ErrorKind.CONFIG),
    (404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this "
                     "resource does not exist."}}, ErrorKind.CLIENT),
    (500, {"error": {"code": "InternalServerError", "message": "Backend returned unexpected "
                     "response."}}, ErrorKind.RETRYABLE),
])
def test_classification_inherited_from_openai(status: int, body: Any, kind: ErrorKind) -> None:
    c = adapter().classify(status, json.dumps(body).encode(), {"retry-after-ms": "6000"})
    assert c.kind is kind
    assert c.retry_after == 6.0
