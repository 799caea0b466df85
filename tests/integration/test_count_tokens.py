"""Token counting through the real gateway, driven by the official SDKs: `anthropic`'s
`messages.count_tokens` and `openai`'s `responses.input_tokens.count`. A provider that counts
the format itself is asked (the Anthropic fake's `count_tokens`, the OpenAI fake's Responses
`input_tokens`); any other deployment is counted by the gateway's tokenizer and says so. The
key's model list applies; nothing is billed or written to the ledger; each count is a metric."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.accounting.estimate import count_prompt_tokens
from gateway.api.anthropic import to_openai_request
from gateway.api.responses_request import to_chat_request
from gateway.keys import generate_key, hash_key
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import records

KEY, LLAMA_ONLY = generate_key(), generate_key()
MESSAGES: list[Any] = [{"role": "user", "content": "How many tokens are in this question?"}]
SYSTEM = "You answer in one word."
TOOLS: list[Any] = [{"name": "get_weather", "description": "Weather in a city",
                     "input_schema": {"type": "object",
                                      "properties": {"city": {"type": "string"}}}}]


@pytest.fixture
def setup(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway],
          tmp_path: Path) -> Iterator[tuple[FakeAnthropic, FakeOpenAI, FakeOpenAI, Gateway, Path]]:
    ant = FakeAnthropic().start()
    oa, vl = fakes("oa"), fakes("vl", vllm=True)
    gw = gateway(simple_policy(
        tmp_path,
        {"ant": {"kind": "anthropic", "base_url": ant.url + "/v1", "api_key": ant.api_key},
         "oa": provider(oa, "openai"), "vl": provider(vl, "vllm")},
        {"claude": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}]},
         "gpt": {"deployments": [{"provider": "oa", "model": "gpt-4o-mini"}]},
         "llama": {"deployments": [{"provider": "vl", "model": "llama-3-8b"}]}},
        tenants={"full": {"keys": [{"id": "k-full", "hash": hash_key(KEY)}]},
                 "narrow": {"keys": [{"id": "k-llama", "hash": hash_key(LLAMA_ONLY)}],
                            "models": ["llama"]}}))
    yield ant, oa, vl, gw, tmp_path
    ant.stop()


def claude_client(gw: Gateway, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def openai_client(gw: Gateway, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def metric(gw: Gateway, model: str, source: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    m = re.search(rf'gateway_token_count_requests_total{{model="{model}",source="{source}"}} '
                  r"([0-9.e+]+)", text)
    return float(m.group(1)) if m else 0.0


# ---- POST /v1/messages/count_tokens ------------------------------------------------------------


def test_anthropic_deployments_count_themselves(setup: Any) -> None:
    ant, _, _, gw, _ = setup
    raw = claude_client(gw).messages.with_raw_response.count_tokens(
        model="claude", messages=MESSAGES, system=SYSTEM, tools=TOOLS,
        extra_headers={"anthropic-beta": "token-counting-2024-11-01"})
    sent = ant.requests[-1]
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.body == {"model": "claude-sonnet-4-5", "messages": MESSAGES, "system": SYSTEM,
                         "tools": TOOLS}
    assert sent.headers["anthropic-beta"] == "token-counting-2024-11-01"
    assert raw.parse().input_tokens == FakeAnthropic.token_count(sent.body)
    assert raw.headers["x-gateway-token-count"] == "provider"
    assert raw.headers["x-gateway-deployment"] == "ant/claude-sonnet-4-5"


def test_other_deployments_are_counted_by_the_gateway_and_flagged(setup: Any) -> None:
    _, _, vl, gw, _ = setup
    body = {"model": "llama", "messages": MESSAGES, "system": SYSTEM, "tools": TOOLS}
    raw = claude_client(gw).messages.with_raw_response.count_tokens(
        model="llama", messages=MESSAGES, system=SYSTEM, tools=TOOLS)
    expected = count_prompt_tokens(to_openai_request({**body, "max_tokens": 1}), "llama-3-8b")
    assert raw.parse().input_tokens == expected > 10
    assert raw.headers["x-gateway-token-count"] == "estimated"
    assert vl.requests == []  # nothing was sent upstream


def test_an_anthropic_deployment_that_fails_is_estimated_instead(setup: Any) -> None:
    ant, _, _, gw, _ = setup
    ant.fail_next(1, status=529)
    raw = claude_client(gw).messages.with_raw_response.count_tokens(
        model="claude", messages=MESSAGES)
    assert raw.headers["x-gateway-token-count"] == "estimated"
    body = {"model": "claude", "messages": MESSAGES, "max_tokens": 1}
    assert raw.parse().input_tokens == count_prompt_tokens(to_openai_request(body),
                                                           "claude-sonnet-4-5")


def test_what_anthropic_refuses_is_refused_in_its_shape(setup: Any) -> None:
    _, _, _, gw, _ = setup
    with pytest.raises(anthropic.BadRequestError) as e:
        claude_client(gw).messages.count_tokens(model="claude", messages=MESSAGES,
                                                extra_body={"max_tokens": 5})
    assert "max_tokens: Extra inputs are not permitted" in str(e.value)
    assert e.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_bad_bodies_are_400s_in_anthropics_words(setup: Any) -> None:
    _, _, _, gw, _ = setup
    r = httpx.post(gw.url + "/v1/messages/count_tokens", headers={"x-api-key": KEY},
                   json={"model": "claude", "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and "messages.0.role" in r.json()["error"]["message"]


def test_the_keys_model_list_applies_to_counting(setup: Any) -> None:
    _, _, _, gw, _ = setup
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        claude_client(gw, LLAMA_ONLY).messages.count_tokens(model="claude", messages=MESSAGES)
    assert 'Model "claude" is not available to this key. Available: llama.' in str(denied.value)
    with pytest.raises(anthropic.NotFoundError):
        claude_client(gw).messages.count_tokens(model="nope", messages=MESSAGES)
    with pytest.raises(anthropic.AuthenticationError):
        claude_client(gw, "wrong-key").messages.count_tokens(model="llama", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(gw, LLAMA_ONLY).responses.input_tokens.count(model="gpt", input="hi")
    with pytest.raises(openai.NotFoundError):
        openai_client(gw).responses.input_tokens.count(model="nope", input="hi")


def test_counting_costs_nothing_and_is_counted_in_metrics(setup: Any) -> None:
    _, _, _, gw, tmp = setup
    client = claude_client(gw)
    for _ in range(2):
        client.messages.count_tokens(model="claude", messages=MESSAGES)
    client.messages.count_tokens(model="llama", messages=MESSAGES)
    openai_client(gw).responses.input_tokens.count(model="llama", input="hi")
    assert metric(gw, "claude", "provider") == 2
    assert metric(gw, "llama", "estimated") == 2
    # A generation request's record lands; the counts before it left none.
    r = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "llama", "messages": MESSAGES})
    assert r.status_code == 200
    assert wait_until(lambda: len(records(tmp)) > 0, timeout=10)
    assert [rec.request_id for rec in records(tmp)] == [r.headers["x-gateway-request-id"]]


# ---- POST /v1/responses/input_tokens -------------------------------------------------------------


def test_a_native_responses_deployment_counts_input_tokens(setup: Any) -> None:
    _, oa, _, gw, _ = setup
    raw = openai_client(gw).responses.input_tokens.with_raw_response.count(
        model="gpt", input="How many tokens is this?", instructions=SYSTEM)
    sent = oa.requests[-1]
    assert sent.path == "/v1/responses/input_tokens"
    assert sent.body == {"model": "gpt-4o-mini", "input": "How many tokens is this?",
                         "instructions": SYSTEM}
    count = raw.parse()
    assert count.object == "response.input_tokens"
    assert count.input_tokens == FakeOpenAI.input_token_count(sent.body)
    assert raw.headers["x-gateway-token-count"] == "provider"


@pytest.mark.parametrize(("model", "upstream"), [("llama", "llama-3-8b"),
                                                 ("claude", "claude-sonnet-4-5")])
def test_translated_deployments_count_the_chat_request_it_means(setup: Any, model: str,
                                                                upstream: str) -> None:
    _, _, vl, gw, _ = setup
    items: list[Any] = [{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]
    raw = openai_client(gw).responses.input_tokens.with_raw_response.count(
        model=model, input=items, instructions=SYSTEM)
    body = {"model": model, "input": items, "instructions": SYSTEM}
    assert raw.parse().input_tokens == count_prompt_tokens(to_chat_request(body, []), upstream)
    assert raw.headers["x-gateway-token-count"] == "estimated"
    assert vl.requests == []


def test_input_tokens_count_the_conversation_previous_response_id_continues(setup: Any) -> None:
    _, _, _, gw, _ = setup
    client = openai_client(gw)
    first = client.responses.create(model="llama", input="Name a colour.")
    alone = client.responses.input_tokens.count(model="llama", input="And another?")
    follow = client.responses.input_tokens.count(model="llama", input="And another?",
                                                 previous_response_id=first.id)
    # The earlier turn (its question and the answer) is counted too.
    assert follow.input_tokens > alone.input_tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.input_tokens.count(model="llama", input="x",
                                            previous_response_id="resp_unknown")
    assert e.value.param == "previous_response_id"  # type: ignore[attr-defined]


def test_a_native_count_names_the_upstreams_own_previous_response(setup: Any) -> None:
    _, oa, _, gw, _ = setup
    client = openai_client(gw)
    first = client.responses.create(model="gpt", input="Name a colour.")
    assert first.id not in oa.responses_api.stored  # clients only ever see the gateway's ids
    count = client.responses.input_tokens.with_raw_response.count(
        model="gpt", input="And another?", previous_response_id=first.id)
    sent = oa.requests[-1].body
    assert sent["previous_response_id"] in oa.responses_api.stored
    assert count.headers["x-gateway-token-count"] == "provider"
    assert count.parse().input_tokens == FakeOpenAI.input_token_count(sent)
