"""The official `openai` SDK through the gateway to the Gemini fake: generateContent and
`streamGenerateContent?alt=sse`, function calling both ways, embeddings, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.gemini_fake import FakeGemini, error_body
from tests.harness import Gateway
from tests.integration.conftest import simple_policy

KEY = "AIzaFakeGeminiKey0123456789"
TOOLS: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]


@pytest.fixture
def gem() -> Iterator[FakeGemini]:
    with FakeGemini(cached_tokens=4, thoughts_tokens=6) as f:
        yield f


@pytest.fixture
def gw(gem: FakeGemini, tmp_path: Any) -> Iterator[Gateway]:
    policy = simple_policy(tmp_path, {
        "gem": {"kind": "gemini", "base_url": gem.url + "/v1beta", "api_key": KEY},
        "badkey": {"kind": "gemini", "base_url": gem.url + "/v1beta", "api_key": "AIzaWrong00"},
    }, {
        "gemini": {"deployments": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
        "emb": {"type": "embedding",
                "deployments": [{"provider": "gem", "model": "gemini-embedding-001"}]},
        "misconfigured": {"deployments": [{"provider": "badkey", "model": "gemini-2.5-flash"}]},
    })
    with Gateway(policy, tmp=tmp_path) as g:
        yield g


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def test_chat_exact_upstream_body_and_usage(gw: Gateway, gem: FakeGemini) -> None:
    r = client(gw).chat.completions.create(
        model="gemini", max_tokens=64, temperature=0.3, stop="END",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Again"}])
    assert r.choices[0].message.content == "Hello0 word1 word2 word3 word4"
    assert r.model == "gemini" and r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 5 + 6)
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 6
    sent = gem.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and "key" not in sent.query
    assert sent.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]},
                     {"role": "model", "parts": [{"text": "Hello."}]},
                     {"role": "user", "parts": [{"text": "Again"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 64,
                             "stopSequences": ["END"]}}


def test_stream_with_and_without_usage(gw: Gateway, gem: FakeGemini) -> None:
    chunks = list(client(gw).chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello0 word1 word2 word3 word4"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11 + 5 + 6
    assert gem.requests[-1].path.endswith(":streamGenerateContent")
    assert gem.requests[-1].query == {"alt": "sse"}
    plain = list(client(gw).chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert all(c.usage is None and c.choices for c in plain)
    assert plain[-1].choices[0].finish_reason == "stop"


def test_stream_helper_function_calls_and_the_round_trip(gw: Gateway, gem: FakeGemini) -> None:
    gem.reply_next([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}])
    messages: list[Any] = [{"role": "user", "content": "Paris and Oslo?"}]
    with client(gw).chat.completions.stream(model="gemini", messages=messages,
                                            tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    msg = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    calls = msg.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris"}, {"city": "Oslo"}]
    assert len({c.id for c in calls}) == 2
    messages.append(msg.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp_c": 18}'},
                 {"role": "tool", "tool_call_id": calls[1].id, "content": "cold"}]
    r = client(gw).chat.completions.create(model="gemini", messages=messages, tools=TOOLS,
                                           tool_choice="required")
    assert r.choices[0].message.content
    sent = gem.requests[-1].body
    assert sent["contents"][1:] == [
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
            {"functionResponse": {"name": "get_weather", "response": {"output": "cold"}}}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == \
        TOOLS[0]["function"]["parameters"]


def test_embeddings_with_the_sdk_default_base64(gw: Gateway, gem: FakeGemini) -> None:
    e = client(gw).embeddings.create(model="emb", input=["a", "b"], dimensions=4)
    assert [len(d.embedding) for d in e.data] == [4, 4]
    assert e.data[0].embedding[0] == pytest.approx(0.1)
    assert gem.requests[-1].path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"


@pytest.mark.parametrize(("status", "body", "exc", "code"), [
    (400, error_body(400, "The input token count (2000000) exceeds the maximum number of tokens "
                          "allowed (1048576)."), openai.BadRequestError, "context_length_exceeded"),
    (400, error_body(400, "Invalid value at 'generation_config.temperature'"),
     openai.BadRequestError, "INVALID_ARGUMENT"),
    (429, error_body(429, "Resource has been exhausted (e.g. check quota)."),
     openai.APIStatusError, "all_deployments_failed"),
])
def test_errors(gw: Gateway, gem: FakeGemini, status: int, body: Any, exc: Any,
                code: str) -> None:
    gem.fail_next(1, status, body)
    with pytest.raises(exc) as e:
        client(gw).chat.completions.create(model="gemini",
                                           messages=[{"role": "user", "content": "x"}])
    assert e.value.code == code


def test_a_wrong_gemini_key_is_the_gateways_fault_and_is_not_echoed(gw: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="misconfigured",
                                           messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "AIzaWrong00" not in e.value.response.text


def test_stream_without_usage_metadata_still_completes(gw: Gateway, gem: FakeGemini) -> None:
    gem.omit_usage = True
    chunks = list(client(gw).chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True}))
    # Nothing to report, so no usage chunk: the gateway estimates for its own accounting.
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
