"""`POST /v1/responses` with the official SDK, native (OpenAI's wire format, passed through) and
translated (chat-only, Anthropic and Gemini backends), with stored conversations across
backends, tenant isolation, `store: false`, mid-stream failures and exact accounting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.keys import generate_key, hash_key
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import record

A_KEY, B_KEY = generate_key(), generate_key()


@pytest.fixture
def env(fakes: Callable[..., FakeOpenAI], gateway: Any, tmp_path: Path) -> Any:
    native = fakes("native", cached_tokens=3, reasoning_tokens=2)
    chat = fakes("chat-only")
    anth = FakeAnthropic("anth").start()
    gem = FakeGemini("gem").start()
    gw = gateway(simple_policy(
        tmp_path,
        {"native": provider(native, kind="openai", api_key="sk-native"),
         "chat": provider(chat),
         "anth": {"kind": "anthropic", "base_url": anth.url, "api_key": anth.api_key},
         "gem": {"kind": "gemini", "base_url": gem.url + "/v1beta", "api_key": gem.api_key}},
        {"gpt": {"deployments": [{"provider": "native", "model": "gpt-4o-mini",
                                  "pricing": [{"input": "1", "cache_read": "0.5",
                                               "output": "2"}]}],
                 "fallbacks": ["chat"]},
         "chat": {"deployments": [{"provider": "chat", "model": "llama"}]},
         "claude": {"deployments": [{"provider": "anth", "model": "claude-sonnet-4-5"}]},
         "gemini": {"deployments": [{"provider": "gem", "model": "gemini-2.5-flash"}]}},
        router={"circuit_breaker": {"failures": 100}},
        tenants={"a": {"keys": [{"id": "ka", "hash": hash_key(A_KEY)}]},
                 "b": {"keys": [{"id": "kb", "hash": hash_key(B_KEY)}]}}))
    yield gw, native, chat, anth, gem
    anth.stop()
    gem.stop()


def _client(gw: Any, key: str = A_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def _record(tmp: Path, client_id: str) -> Any:
    return record(tmp, client_id=client_id)


@pytest.mark.parametrize("model", ["gpt", "chat", "claude", "gemini"])
def test_create_on_every_backend_kind(env: Any, model: str) -> None:
    gw = env[0]
    r = _client(gw).responses.create(model=model, input="Say hello",
                                     instructions="Be brief.")
    assert r.object == "response" and r.status == "completed" and r.model == model
    assert r.id.startswith("resp_") and r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["gpt", "chat", "claude", "gemini"])
def test_stream_on_every_backend_kind(env: Any, model: str) -> None:
    gw = env[0]
    with _client(gw).responses.stream(model=model, input="Say hello") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == final.output_text and final.output_text
    assert final.id.startswith("resp_") and final.usage is not None


def test_native_pass_through_keeps_the_body_but_the_model(env: Any) -> None:
    gw, native, *_ = env
    _client(gw).responses.create(model="gpt", input="hi", temperature=0.3,
                                 metadata={"team": "x"}, extra_body={"service_tier": "flex"})
    sent = native.bodies("/responses")[-1]
    assert sent["model"] == "gpt-4o-mini" and sent["service_tier"] == "flex"
    assert sent["metadata"] == {"team": "x"} and sent["temperature"] == 0.3


def test_accounting_matches_the_upstream_usage_and_endpoint(env: Any, tmp_path: Path) -> None:
    gw = env[0]
    for stream in (False, True):
        rid = f"acct-{stream}"
        c = _client(gw)
        if stream:
            with c.responses.stream(model="gpt", input="hi",
                                    extra_headers={"x-request-id": rid}) as s:
                got = s.get_final_response().usage
        else:
            got = c.responses.create(model="gpt", input="hi",
                                     extra_headers={"x-request-id": rid}).usage
        rec = _record(tmp_path, rid)
        assert rec.endpoint == "responses" and rec.status == 200 and rec.error_code is None
        (att,) = rec.attempts
        u = att.usage
        assert got is not None and u is not None and u.source == "provider"
        cached = got.input_tokens_details.cached_tokens
        reasoning = got.output_tokens_details.reasoning_tokens
        assert (u.input_uncached, u.cache_read) == (got.input_tokens - cached, cached)
        assert (u.output, u.reasoning) == (got.output_tokens - reasoning, reasoning)
        assert rec.cost_usd > 0


def test_previous_response_id_on_a_native_backend_forwards_the_upstreams_id(env: Any) -> None:
    gw, native, *_ = env
    c = _client(gw)
    first = c.responses.create(model="gpt", input="My name is Ada.")
    c.responses.create(model="gpt", input="What is my name?", previous_response_id=first.id)
    sent = native.bodies("/responses")[-1]
    upstream_id = sent["previous_response_id"]
    assert upstream_id and upstream_id != first.id  # the fake's own id, never ours


def test_previous_response_id_survives_a_fallback_to_a_translated_backend(env: Any) -> None:
    gw, native, chat, *_ = env
    c = _client(gw)
    first = c.responses.create(model="gpt", input="My name is Ada.")
    native.fail_next(10, status=503)
    second = c.responses.create(model="gpt", input="What is my name?",
                                previous_response_id=first.id)
    assert second.output_text
    sent = chat.bodies("/chat/completions")[-1]["messages"]
    texts = [m["content"] if isinstance(m["content"], str) else
             "".join(p.get("text", "") for p in m["content"]) for m in sent]
    assert texts[0] == "My name is Ada." and texts[1] == first.output_text
    assert sent[1]["role"] == "assistant" and texts[-1] == "What is my name?"
    # And the chain goes on from the translated turn.
    third = c.responses.create(model="chat", input="Again?", previous_response_id=second.id)
    assert len(chat.bodies("/chat/completions")[-1]["messages"]) == 5 and third.output_text


def test_stored_responses_are_the_tenants_own(env: Any) -> None:
    gw = env[0]
    mine = _client(gw).responses.create(model="chat", input="secret plan")
    assert _client(gw).responses.retrieve(mine.id).output_text == mine.output_text
    items = _client(gw).responses.input_items.list(mine.id)
    assert [i.type for i in items.data] == ["message"]
    other = _client(gw, B_KEY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as e:
        other.responses.create(model="chat", input="continue", previous_response_id=mine.id)
    assert e.value.code == "previous_response_not_found"
    _client(gw).responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        _client(gw).responses.retrieve(mine.id)


def test_store_false_stores_nothing(env: Any) -> None:
    gw, native, *_ = env
    for model in ("gpt", "chat"):
        r = _client(gw).responses.create(model=model, input="hi", store=False)
        with pytest.raises(openai.NotFoundError):
            _client(gw).responses.retrieve(r.id)
    assert native.bodies("/responses")[-1]["store"] is False


@pytest.mark.parametrize("model", ["gpt", "chat"])
def test_a_mid_stream_failure_raises_in_the_sdk(env: Any, model: str, tmp_path: Path) -> None:
    gw, native, chat, *_ = env
    (native if model == "gpt" else chat).drop_stream_after(4)
    seen: list[str] = []
    # OpenAI ends a failed stream with `response.failed` and an `error` event; the SDK raises
    # on the error event, or at the latest when asked for the final response.
    with pytest.raises((openai.APIError, RuntimeError)):
        with _client(gw).responses.stream(model=model, input="hi",
                                          extra_headers={"x-request-id": f"drop-{model}"}) as s:
            for event in s:
                seen.append(event.type)
            s.get_final_response()
    assert "response.completed" not in seen
    assert not seen or seen[-1] in ("error", "response.failed")
    rec = _record(tmp_path, f"drop-{model}")
    assert rec.error_code == "upstream_stream_error"


def test_built_in_tools_are_refused_on_translated_backends(env: Any) -> None:
    gw = env[0]
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw).responses.create(model="chat", input="news?",
                                     tools=[{"type": "web_search_preview"}])
    assert "web_search" in e.value.message


def test_function_tools_round_trip_through_translation(env: Any) -> None:
    gw, _native, _chat, anth, _gem = env
    anth.reply_next([{"type": "tool_use", "id": "toolu_1", "name": "weather",
                      "input": {"city": "Paris"}}], "tool_use")
    tools = [{"type": "function", "name": "weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]
    c = _client(gw)
    first = c.responses.create(model="claude", input="Weather in Paris?", tools=tools)
    (call,) = [o for o in first.output if o.type == "function_call"]
    assert (call.name == "weather" and call.arguments == '{"city": "Paris"}') \
        or call.arguments == '{"city":"Paris"}'
    second = c.responses.create(model="claude", previous_response_id=first.id, tools=tools,
                                input=[{"type": "function_call_output", "call_id": call.call_id,
                                        "output": "18 C and sunny"}])
    assert second.output_text
    sent = anth.bodies("/messages")[-1]["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use"
    assert sent[2]["content"][0]["type"] == "tool_result"


def test_http_details(env: Any) -> None:
    gw = env[0]
    r = httpx.post(gw.base_url + "/responses", headers={"authorization": f"Bearer {A_KEY}"},
                   json={"model": "chat", "input": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = httpx.get(gw.base_url + "/responses/resp_nope",
                  headers={"authorization": f"Bearer {A_KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_store_that_is_down_answers_503_and_never_costs_the_answer(
        fakes: Callable[..., FakeOpenAI], gateway: Any, tmp_path: Path) -> None:
    """The ledger's database (and with it the stored responses) unreachable: a new response is
    still answered (and its record spilled), and this replica still holds it (the store keeps
    a batch it cannot write and retries it), so it can be read and continued; a response it
    does not hold reads as "the store is down" (503), never as "it does not exist" (404)."""
    chat = fakes("chat-only")
    policy = simple_policy(tmp_path, {"chat": provider(chat)},
                           {"chat": {"deployments": [{"provider": "chat", "model": "llama"}]}})
    policy["ledger"]["url"] = "postgresql://postgres@127.0.0.1:1/nothing"  # nothing listens
    gw = gateway(policy)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=20)
    answered = c.responses.create(model="chat", input="hi")
    assert answered.output_text
    assert c.responses.retrieve(answered.id).output_text == answered.output_text
    again = c.responses.create(model="chat", input="again", previous_response_id=answered.id)
    assert again.previous_response_id == answered.id
    elsewhere = "resp_" + "0" * 32  # stored by another replica, say: only the database knows
    with pytest.raises(openai.InternalServerError) as e:
        c.responses.retrieve(elsewhere)
    assert e.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as e:
        c.responses.create(model="chat", input="again", previous_response_id=elsewhere)
    assert e.value.status_code == 503 and "retry" in e.value.message.lower()
