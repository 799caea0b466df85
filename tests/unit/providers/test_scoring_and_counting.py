"""Reranking, scoring and token counting at the adapters: which kinds serve them (and the 400
naming the kind for those that do not), the upstream request, and the usage read back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.accounting.usage import Usage
from gateway.call import Call, Conversation, Endpoint
from gateway.errors import InvalidRequest
from gateway.policy.models import (
    AnthropicProvider,
    AzureProvider,
    Deployment,
    GeminiProvider,
    LocalProvider,
    OpenAIProvider,
    ProviderBase,
)
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.azure import AzureAdapter
from gateway.providers.base import Target
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai_compat import OpenAICompatAdapter, scoring_usage

TARGET = Target("rank", Deployment(provider="up", model="bge-reranker-base"), "up")
RERANK = {"model": "rank", "query": "capital of France",
          "documents": ["Paris is the capital of France", "Berlin"], "top_n": 1}
SCORE = {"model": "rank", "text_1": "capital of France", "text_2": ["Paris", "Berlin"]}


def scoring_call(endpoint: Endpoint, body: dict[str, Any]) -> Call:
    return Call(endpoint, "rank", body, json.dumps(body).encode(), False, "rid")


def openai_compat(kind: str) -> OpenAICompatAdapter:
    cfg: ProviderBase = LocalProvider(kind="local", base_url="http://up/v1") if kind == "local" \
        else OpenAIProvider(kind=kind, base_url="http://up/v1")  # type: ignore[arg-type]
    return OpenAICompatAdapter("up", cfg)


# ---- which kinds serve rerank and score ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "openai-compatible"])
@pytest.mark.parametrize(("endpoint", "body", "path"), [("rerank", RERANK, "/v1/rerank"),
                                                        ("score", SCORE, "/v1/score")])
def test_vllm_and_compatible_kinds_are_sent_the_body_with_the_upstream_model(
        kind: str, endpoint: Endpoint, body: dict[str, Any], path: str) -> None:
    req = openai_compat(kind).build_request(scoring_call(endpoint, body), TARGET, False)
    assert req.url == "http://up" + path
    assert json.loads(req.body) == {**body, "model": "bge-reranker-base"}


@pytest.mark.parametrize(("kind", "reason"), [
    ("openai", "OpenAI's API has no /v1/rerank endpoint"),
    ("local", "local_backend serves no cross-encoder"),
])
def test_kinds_without_a_reranker_refuse_naming_the_kind(kind: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        openai_compat(kind).build_request(scoring_call("rerank", RERANK), TARGET, False)
    assert e.value.status == 400 and e.value.param == "model"
    assert f"`kind: {kind}` provider" in e.value.message and reason in e.value.message
    assert "`vllm` or `openai-compatible`" in e.value.message


def test_azure_anthropic_and_gemini_refuse_rerank_and_score() -> None:
    azure = AzureAdapter("az", AzureProvider(kind="azure", base_url="https://r.openai.azure.com",
                                             api_key="k"))
    anthropic = AnthropicAdapter("ant", AnthropicProvider(kind="anthropic", api_key="k"))
    gemini = GeminiAdapter("gem", GeminiProvider(kind="gemini", api_key="k"))
    for adapter, name in ((azure, "Azure OpenAI"), (anthropic, "Anthropic"), (gemini, "Gemini")):
        for endpoint, body in (("rerank", RERANK), ("score", SCORE)):
            with pytest.raises(InvalidRequest) as e:
                adapter.build_request(scoring_call(endpoint, body), TARGET, False)
            assert name in e.value.message and f"/v1/{endpoint}" in e.value.message


# ---- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 42, "total_tokens": 42}, 42),  # vLLM's score, newer rerank
    ({"total_tokens": 17}, 17),  # older vLLM rerank, Jina
    ({"prompt_tokens": 0, "total_tokens": 9}, 9),
    ({"prompt_tokens": 8, "total_tokens": 8, "completion_tokens": 0}, 8),
])
def test_scoring_usage_is_all_input(usage: dict[str, int], expected: int) -> None:
    body = json.dumps({"id": "r", "results": [], "usage": usage}).encode()
    assert scoring_usage(body) == Usage(input_uncached=expected)


@pytest.mark.parametrize("body", [
    b'{"id": "r", "results": [], "meta": {"billed_units": {"search_units": 1}}}',  # Cohere
    b'{"results": [], "usage": null}', b'{"results": [], "usage": {"total_tokens": "7"}}',
    b'{"results": [], "usage": {"total_tokens": true}}', b"not json", b"[1, 2]",
])
def test_scoring_usage_is_none_when_the_reply_has_no_token_count(body: bytes) -> None:
    assert scoring_usage(body) is None


def test_rerank_reply_names_the_public_model_and_reports_its_usage() -> None:
    reply = json.dumps({"id": "rerank-1", "model": "bge-reranker-base",
                        "usage": {"total_tokens": 12},
                        "results": [{"index": 0, "relevance_score": 0.9}]}).encode()
    out = openai_compat("vllm").parse_reply(scoring_call("rerank", RERANK), TARGET, reply, False)
    assert json.loads(out.body)["model"] == "rank"
    assert out.usage == Usage(input_uncached=12)


# ---- token counting requests -------------------------------------------------------------------

COUNT = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "system": "be brief"}


def counting_call(ingress: str, body: dict[str, Any], **kw: Any) -> Call:
    return Call("chat", body["model"], {}, b"", False, "rid", ingress=ingress,  # type: ignore[arg-type]
                native_body=body, native_raw=json.dumps(body).encode(), **kw)


def test_anthropic_counts_its_own_format_with_the_deployment_model_and_beta_header() -> None:
    adapter = AnthropicAdapter("ant", AnthropicProvider(
        kind="anthropic", api_key="sk-ant", base_url="https://api.anthropic.com"))
    target = Target("claude", Deployment(provider="ant", model="claude-sonnet-4-5"), "ant")
    call = counting_call("anthropic", COUNT, headers={"anthropic-beta": "tools-2024"})
    req = adapter.token_count_request(call, target)
    assert req is not None
    assert req.url == "https://api.anthropic.com/v1/messages/count_tokens"
    assert json.loads(req.body) == {**COUNT, "model": "claude-sonnet-4-5"}
    assert req.headers["x-api-key"] == "sk-ant" and req.headers["anthropic-beta"] == "tools-2024"
    assert adapter.token_count_request(counting_call("responses", COUNT), target) is None


RESPONSES = {"model": "gpt", "input": "How many tokens is this?", "instructions": "Be brief."}
GPT = Target("gpt", Deployment(provider="oa", model="gpt-4o-mini"), "oa")


def test_a_native_responses_provider_counts_input_tokens_with_the_same_body() -> None:
    adapter = OpenAICompatAdapter("oa", OpenAIProvider(kind="openai", base_url="http://up/v1"))
    req = adapter.token_count_request(counting_call("responses", RESPONSES), GPT)
    assert req is not None and req.url == "http://up/v1/responses/input_tokens"
    assert json.loads(req.body) == {**RESPONSES, "model": "gpt-4o-mini"}
    # A continued conversation the provider never saw goes as its turns (as /v1/responses).
    turn = [{"type": "message", "role": "user", "content": "earlier"}]
    call = counting_call("responses", {**RESPONSES, "previous_response_id": "resp_gw"},
                         conversation=Conversation(turn, "resp_gw"))
    req = adapter.token_count_request(call, GPT)
    assert req is not None
    sent = json.loads(req.body)
    assert "previous_response_id" not in sent and sent["input"][0] == turn[0]


def test_providers_without_native_responses_leave_the_count_to_the_gateway() -> None:
    for kind in ("vllm", "openai-compatible"):
        adapter = openai_compat(kind)
        assert adapter.token_count_request(counting_call("responses", RESPONSES), GPT) is None
    openai = openai_compat("openai")
    assert openai.token_count_request(counting_call("anthropic", COUNT), GPT) is None


def test_azure_counts_input_tokens_at_its_responses_url() -> None:
    azure = AzureAdapter("az", AzureProvider(kind="azure", base_url="https://r.openai.azure.com",
                                             api_key="k", api_version="2025-04-01-preview"))
    req = azure.token_count_request(counting_call("responses", RESPONSES), GPT)
    assert req is not None
    assert req.url == ("https://r.openai.azure.com/openai/responses/input_tokens"
                       "?api-version=2025-04-01-preview")
