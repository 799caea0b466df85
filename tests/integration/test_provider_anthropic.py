"""The official `openai` SDK through the gateway to the Anthropic fake: translation both ways,
streams, tool use, errors — and the exact bodies Anthropic received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.accounting.usage import Usage
from tests.fakes.anthropic_fake import FakeAnthropic, error_body
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy
from tests.integration.test_messages_ingress import recorded_usage

KEY = "sk-ant-fake-key"
TOOLS: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture
def ant() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(cache_read=40, cache_write=5) as f:
        yield f


@pytest.fixture
def gw(ant: FakeAnthropic, tmp_path: Any) -> Iterator[Gateway]:
    spare = FakeOpenAI("spare")
    policy = simple_policy(tmp_path, {
        "ant": {"kind": "anthropic", "base_url": ant.url, "api_key": KEY,
                "default_max_tokens": 333, "headers": {"anthropic-beta": "x-test"}},
        "spare": {"kind": "openai-compatible", "base_url": spare.url + "/v1"},
    }, {
        "claude": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}]},
        "claude-or-spare": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}],
                            "fallbacks": ["spare"]},
        "spare": {"deployments": [{"provider": "spare", "model": "spare-llm"}]},
    })
    with spare, Gateway(policy, tmp=tmp_path) as g:
        yield g


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def test_chat_is_translated_and_the_exact_body_reaches_anthropic(gw: Gateway,
                                                                  ant: FakeAnthropic) -> None:
    r = client(gw).chat.completions.create(
        model="claude", temperature=0.2, stop=["###"], user="u1",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi"}, {"role": "user", "content": "there"}])
    assert r.choices[0].message.content == "Hello0 word1 word2 word3 word4"
    assert r.choices[0].finish_reason == "stop" and r.model == "claude"
    assert r.usage is not None
    assert r.usage.prompt_tokens == 11 + 40 + 5
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 40
    sent = ant.requests[-1]
    assert sent.body == {
        "model": "claude-sonnet-4-5", "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                  {"type": "text", "text": "there"}]}],
        "max_tokens": 333, "stop_sequences": ["###"], "temperature": 0.2,
        "metadata": {"user_id": "u1"}}
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "x-test"


def test_stream_with_usage(gw: Gateway, ant: FakeAnthropic) -> None:
    chunks = list(client(gw).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Hi"}], max_tokens=50,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello0 word1 word2 word3 word4"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 56
    assert all(c.model == "claude" for c in chunks)
    assert ant.requests[-1].body["stream"] is True
    assert "stream_options" not in ant.requests[-1].body  # an OpenAI-only field


def test_stream_helper_with_tool_calls_then_the_round_trip(gw: Gateway,
                                                          ant: FakeAnthropic) -> None:
    ant.reply_next([{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                     "input": {"city": "Oslo"}}], "tool_use")
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    with client(gw).chat.completions.stream(model="claude", messages=messages,
                                            tools=TOOLS) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [json.loads(e.arguments) for e in done] == [{"city": "Paris"}, {"city": "Oslo"}]
    msg = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and msg.content == "Checking."
    assert [c.id for c in msg.tool_calls or []] == ["toolu_1", "toolu_2"]
    # Send the results back: the fake rejects tool results that answer nothing.
    messages.append(msg.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                 {"role": "tool", "tool_call_id": "toolu_2", "content": "3C"}]
    r = client(gw).chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                           tool_choice="auto")
    assert r.choices[0].message.content
    sent = ant.requests[-1].body
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
             "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "3C"}]}]
    assert sent["tool_choice"] == {"type": "auto"}
    assert sent["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]


def test_non_streamed_tool_call(gw: Gateway, ant: FakeAnthropic) -> None:
    ant.reply_next([{"type": "tool_use", "id": "toolu_9", "name": "get_weather",
                     "input": {"city": "Rome"}}], "tool_use")
    r = client(gw).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Rome?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = (r.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Rome"}  # type: ignore[union-attr]
    assert r.choices[0].message.content is None
    assert ant.requests[-1].body["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_prompt_too_long_is_a_context_length_error(gw: Gateway, ant: FakeAnthropic) -> None:
    ant.fail_next(1, 400, error_body(400, "prompt is too long: 250000 tokens > 200000 maximum"))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model="claude",
                                           messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "context_length_exceeded"
    assert "prompt is too long" in str(e.value)


def test_client_errors_are_returned_not_retried(gw: Gateway, ant: FakeAnthropic) -> None:
    before = len(ant.requests)
    ant.fail_next(1, 400, error_body(400, "messages.0.content: invalid image"))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model="claude-or-spare",
                                           messages=[{"role": "user", "content": "x"}])
    assert "invalid image" in str(e.value)
    assert len(ant.requests) == before + 1


def test_overloaded_and_bad_key_fall_back(gw: Gateway, ant: FakeAnthropic) -> None:
    ant.fail_next(1, 529, error_body(529, "Overloaded", "overloaded_error"))
    r = client(gw).with_raw_response.chat.completions.create(
        model="claude-or-spare", messages=[{"role": "user", "content": "x"}])
    assert r.headers["x-gateway-deployment"] == "spare/spare-llm"
    assert r.parse().model == "claude-or-spare"
    ant.fail_next(1, 401, error_body(401, "invalid x-api-key"))
    r = client(gw).with_raw_response.chat.completions.create(
        model="claude-or-spare", messages=[{"role": "user", "content": "x"}])
    assert r.headers["x-gateway-deployment"] == "spare/spare-llm"


def test_upstream_key_and_address_never_reach_the_client(gw: Gateway, ant: FakeAnthropic) -> None:
    ant.fail_next(1, 401, error_body(401, f"invalid x-api-key {KEY} at {ant.url}/v1/messages"))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="claude",
                                           messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    text = e.value.response.text
    assert KEY not in text and ant.url not in text and str(ant.port) not in text


def test_overloaded_event_before_content_still_falls_back(gw: Gateway,
                                                          ant: FakeAnthropic) -> None:
    # message_start, then `event: error` overloaded_error instead of the ping: nothing has
    # reached the client yet, so the gateway can still serve the fallback.
    ant.error_event_after(1)
    chunks = list(client(gw).chat.completions.create(
        model="claude-or-spare", messages=[{"role": "user", "content": "x"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello0 word1 word2 word3 word4"
    assert all(c.model == "claude-or-spare" for c in chunks)


def test_error_event_mid_stream_reaches_the_client_as_an_error(gw: Gateway,
                                                              ant: FakeAnthropic) -> None:
    ant.error_event_after(5)  # after some text deltas
    with pytest.raises(openai.APIError):
        for _ in client(gw).chat.completions.create(
                model="claude", messages=[{"role": "user", "content": "x"}], stream=True):
            pass


def test_stream_usage_is_recorded_when_the_client_did_not_ask(gw: Gateway, ant: FakeAnthropic,
                                                              tmp_path: Any) -> None:
    chunks = list(client(gw).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Hi"}], stream=True,
        extra_headers={"x-request-id": "acct-ant-1"}))
    assert all(c.usage is None for c in chunks)
    usage = recorded_usage(tmp_path, "acct-ant-1")
    assert usage is not None and usage.source == "provider"
    assert (usage.input_uncached, usage.cache_read, usage.cache_write) == (11, 40, 5)
    assert usage.output > 0 and usage == Usage(11, 40, 5, usage.output)
