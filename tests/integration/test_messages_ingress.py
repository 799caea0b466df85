"""`POST /v1/messages` with the official `anthropic` SDK: translated to an OpenAI-compatible
backend and to Gemini, and passed through to an Anthropic backend (native mode)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from gateway.accounting.ledger import open_ledger
from gateway.accounting.usage import Usage
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.anthropic_fake import error_body as anthropic_error
from tests.fakes.base import wait_until
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy

TOOL: Any = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAI, FakeGemini, FakeAnthropic]]:
    fs = (FakeOpenAI("oa", cached_tokens=3), FakeGemini(), FakeAnthropic(cache_read=7))
    for f in fs:
        f.start()
    yield fs
    for f in fs:
        f.stop()


@pytest.fixture
def gw(fakes: tuple[FakeOpenAI, FakeGemini, FakeAnthropic], tmp_path: Any) -> Iterator[Gateway]:
    oa, gem, ant = fakes
    g = Gateway(simple_policy(tmp_path, {
        "oa": {"kind": "openai-compatible", "base_url": oa.url + "/v1"},
        "gem": {"kind": "gemini", "base_url": gem.url + "/v1beta", "api_key": gem.api_key},
        "ant": {"kind": "anthropic", "base_url": ant.url + "/v1", "api_key": ant.api_key},
    }, {
        "llama": {"deployments": [{"provider": "oa", "model": "llama-3-8b"}]},
        "gemini": {"deployments": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
        "claude": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}]},
        "claude-or-llama": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}],
                            "fallbacks": ["llama"]},
    }), tmp=tmp_path).start()
    yield g
    g.stop()


def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)


HELLO = "Hello0 word1 word2 word3 word4"


def recorded_usage(tmp: Path, request_id: str) -> Usage | None:
    """The usage the ledger recorded for the serving attempt of one request (written off the
    request path, so polled)."""
    found: list[Usage | None] = []

    def look() -> bool:
        ledger = open_ledger(f"sqlite:///{tmp}/ledger.db")
        ledger.connect()
        try:
            today = datetime.now(UTC).date()
            for r in ledger.read_records(today - timedelta(days=1), today + timedelta(days=1)):
                if r.client_request_id == request_id:
                    found.append(next(a.usage for a in r.attempts if a.outcome == "ok"))
                    return True
            return False
        finally:
            ledger.close()

    assert wait_until(look, timeout=10), f"no ledger record for {request_id}"
    return found[0]


# ---- to an OpenAI-compatible backend ---------------------------------------------------------

def test_create_on_an_openai_backend(gw: Gateway, fakes: Any) -> None:
    oa = fakes[0]
    m = client(gw).messages.create(
        model="llama", max_tokens=64, system="Be brief.", stop_sequences=["###"],
        metadata={"user_id": "u1"}, messages=[{"role": "user", "content": "Hi"}])
    assert m.type == "message" and m.role == "assistant" and m.model == "llama"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "Hello0 word1 word2 word3 word4"  # type: ignore[union-attr]
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == \
        (11 - 3, 3, 5)
    assert oa.requests[-1].body == {
        "model": "llama-3-8b", "max_tokens": 64, "stop": ["###"], "user": "u1",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}]}


def test_stream_on_an_openai_backend(gw: Gateway, fakes: Any) -> None:
    with client(gw).messages.stream(model="llama", max_tokens=64,
                                    messages=[{"role": "user", "content": "Hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello0 word1 word2 word3 word4"
    assert final.stop_reason == "end_turn" and final.model == "llama"
    assert final.usage.input_tokens == 8 and final.usage.output_tokens == 5
    assert fakes[0].requests[-1].body["stream_options"] == {"include_usage": True}


def test_accounting_reads_the_adapters_usage_not_the_codecs(gw: Gateway, tmp_path: Any) -> None:
    for model, rid in (("llama", "acct-oa"), ("claude", "acct-native"), ("gemini", "acct-gem")):
        with client(gw).messages.stream(model=model, max_tokens=64,
                                        messages=[{"role": "user", "content": "Hi"}],
                                        extra_headers={"x-request-id": rid}) as s:
            s.until_done()
    assert recorded_usage(tmp_path, "acct-oa") == Usage(input_uncached=8, cache_read=3, output=5)
    native = recorded_usage(tmp_path, "acct-native")
    assert native is not None and (native.input_uncached, native.cache_read) == (11, 7)
    assert recorded_usage(tmp_path, "acct-gem") == Usage(input_uncached=11, output=5)


# ---- to Gemini: tool use through two translations --------------------------------------------

def test_tool_use_streamed_from_gemini(gw: Gateway, fakes: Any) -> None:
    gem = fakes[1]
    gem.reply_next([{"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}])
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    with client(gw).messages.stream(model="gemini", max_tokens=100, tools=[TOOL],
                                    messages=messages) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    use: Any = final.content[1]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}  # type: ignore[union-attr]
    messages += [{"role": "assistant", "content": [b.model_dump() for b in final.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "18C"}]}]
    m = client(gw).messages.create(model="gemini", max_tokens=100, tools=[TOOL],
                                   messages=messages)
    assert m.content[0].type == "text"
    assert gem.requests[-1].body["contents"][1:] == [
        {"role": "model", "parts": [{"text": "Checking."},
                                    {"functionCall": {"name": "get_weather",
                                                      "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                         "response": {"output": "18C"}}}]}]


def test_tool_use_non_streamed_from_gemini(gw: Gateway, fakes: Any) -> None:
    fakes[1].reply_next([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}])
    m = client(gw).messages.create(model="gemini", max_tokens=100, tools=[TOOL],
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   messages=[{"role": "user", "content": "Oslo?"}])
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    assert m.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert fakes[1].requests[-1].body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


# ---- to Anthropic: native pass-through ----------------------------------------------------------

def test_native_create_sends_the_client_body_untranslated(gw: Gateway, fakes: Any) -> None:
    ant = fakes[2]
    body: dict[str, Any] = {
        "model": "claude", "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hi"}]}
    # top_k has no OpenAI counterpart: only a native pass-through keeps it.
    m = client(gw).messages.create(**body, extra_body={"top_k": 5})
    assert m.model == "claude" and m.usage.cache_read_input_tokens == 7
    assert ant.requests[-1].body == {**body, "top_k": 5, "model": "claude-sonnet-4-5"}
    assert ant.requests[-1].headers["x-api-key"] == ant.api_key  # ours, not the client's


def test_native_stream_and_tool_use(gw: Gateway, fakes: Any) -> None:
    ant = fakes[2]
    ant.reply_next([{"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_7", "name": "get_weather",
                     "input": {"city": "Rome"}}], "tool_use")
    with client(gw).messages.stream(model="claude", max_tokens=100, tools=[TOOL],
                                    messages=[{"role": "user", "content": "Rome?"}]) as s:
        final = s.get_final_message()
    assert final.model == "claude" and final.stop_reason == "tool_use"
    assert final.content[1].input == {"city": "Rome"}  # type: ignore[union-attr]
    assert ant.requests[-1].body["stream"] is True
    assert ant.requests[-1].body["tools"] == [TOOL]


def test_native_raw_stream_is_anthropics_bytes_but_model(gw: Gateway, fakes: Any) -> None:
    body = {"model": "claude", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", gw.url + "/v1/messages", json=body,
                      headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}) as r:
        got = b"".join(r.iter_bytes())
    direct = httpx.post(fakes[2].url + "/v1/messages", json={**body, "model": "claude-sonnet-4-5"},
                        headers={"x-api-key": fakes[2].api_key,
                                 "anthropic-version": "2023-06-01"}).content
    first, rest = got.split(b"\n\n", 1)
    d_rest = direct.split(b"\n\n", 1)[1]
    assert rest == d_rest
    start = json.loads(first.split(b"data: ", 1)[1])
    assert start["message"]["model"] == "claude"


# ---- errors in Anthropic's format ----------------------------------------------------------------

def test_validation_errors_are_anthropic_shaped(gw: Gateway) -> None:
    r = httpx.post(gw.url + "/v1/messages", json={"model": "llama", "messages": [
        {"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "max_tokens: Field required"}}
    with pytest.raises(anthropic.NotFoundError) as e:
        client(gw).messages.create(model="nope", max_tokens=5,
                                   messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_native_upstream_errors_come_back_anthropic_shaped(gw: Gateway, fakes: Any) -> None:
    fakes[2].fail_next(1, 400, anthropic_error(400, "messages.0.content.0: bad image"))
    with pytest.raises(anthropic.BadRequestError) as e:
        client(gw).messages.create(model="claude", max_tokens=5,
                                   messages=[{"role": "user", "content": "x"}])
    assert "bad image" in e.value.body["error"]["message"]  # type: ignore[index]


def test_mid_stream_failure_is_an_anthropic_error_event(gw: Gateway, fakes: Any) -> None:
    fakes[0].drop_stream_after(3)
    with pytest.raises(anthropic.APIStatusError):
        with client(gw).messages.stream(model="llama", max_tokens=64,
                                        messages=[{"role": "user", "content": "Hi"}]) as s:
            for _ in s:
                pass


@pytest.mark.parametrize("stream", [False, True])
def test_native_deployment_fails_over_to_a_translated_one(gw: Gateway, fakes: Any,
                                                          stream: bool) -> None:
    fakes[2].fail_next(1, 529, anthropic_error(529, "Overloaded", "overloaded_error"))
    kw: Any = {"model": "claude-or-llama", "max_tokens": 20,
               "messages": [{"role": "user", "content": "Hi"}]}
    if stream:
        with client(gw).messages.stream(**kw) as s:
            m = s.get_final_message()
    else:
        m = client(gw).messages.create(**kw)
    assert m.model == "claude-or-llama" and m.content[0].type == "text"
    assert m.content[0].text == HELLO  # type: ignore[union-attr]
    assert fakes[0].requests[-1].body["model"] == "llama-3-8b"
