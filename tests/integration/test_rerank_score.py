"""`/v1/rerank` and `/v1/score` through the real gateway against the vLLM fake: routed, fallen
back and accounted like embeddings — the ledger's input bucket is what the upstream reported —
with the key's model list enforced, and a clear 400 from provider kinds that cannot rerank."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.accounting.records import RequestRecord
from gateway.accounting.usage import Usage
from gateway.keys import generate_key, hash_key
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import record as by_request

FULL, CHAT_ONLY = generate_key(), generate_key()
QUERY = "capital of France"
DOCS = ["Berlin is in Germany", "Paris is the capital of France", "France has a capital"]
PRICE = {"input": "2", "output": "8"}  # USD per million tokens


def record(tmp: Path, request_id: str) -> RequestRecord:
    return by_request(tmp, request_id=request_id)


@pytest.fixture
def setup(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway],
          tmp_path: Path) -> Any:
    vllm, backup, oa = fakes("vllm", vllm=True), fakes("backup", vllm=True), fakes("oa")
    ant = FakeAnthropic().start()
    rerankers = [{"provider": "vllm", "model": "BAAI/bge-reranker-base", "pricing": [PRICE]},
                 {"provider": "backup", "model": "bge-reranker-v2-m3", "weight": 0,
                  "pricing": [PRICE]}]
    gw = gateway(simple_policy(
        tmp_path,
        {"vllm": provider(vllm, "vllm"), "backup": provider(backup, "vllm"),
         "oa": provider(oa, "openai"),
         "ant": {"kind": "anthropic", "base_url": ant.url + "/v1", "api_key": ant.api_key}},
        {"rank": {"type": "rerank", "deployments": rerankers[:1], "fallbacks": ["rank-backup"]},
         "rank-backup": {"type": "rerank", "deployments": [{**rerankers[1], "weight": 1}]},
         "chat": {"deployments": [{"provider": "oa", "model": "gpt-4o-mini"}]},
         "claude": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}]}},
        tenants={"full": {"keys": [{"id": "k-full", "hash": hash_key(FULL)}]},
                 "narrow": {"keys": [{"id": "k-chat", "hash": hash_key(CHAT_ONLY)}],
                            "models": ["chat"]}}))
    yield vllm, backup, gw, tmp_path
    ant.stop()


def post(gw: Gateway, path: str, body: dict[str, Any], key: str = FULL) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=30)


def pair_tokens(docs: list[str], query: str = QUERY) -> int:
    return sum(FakeOpenAI.pair_tokens(query, d) for d in docs)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_passes_through_and_is_billed_as_input(setup: Any, path: str) -> None:
    vllm, _, gw, tmp = setup
    r = post(gw, path, {"model": "rank", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "rank"  # the public name, not the upstream's
    assert [x["index"] for x in out["results"]] == [1, 2]
    assert out["results"][0]["document"]["text"] == DOCS[1]
    assert vllm.requests[-1].path == "/v1/rerank"
    assert vllm.requests[-1].body == {"model": "BAAI/bge-reranker-base", "query": QUERY,
                                      "documents": DOCS, "top_n": 2}
    rec = record(tmp, r.headers["x-gateway-request-id"])
    tokens = pair_tokens(DOCS)
    assert (rec.endpoint, rec.status, rec.tenant) == ("rerank", 200, "full")
    assert [a.usage for a in rec.attempts] == [Usage(input_uncached=tokens)]
    assert rec.cost_usd == Decimal(2) * tokens / 1_000_000


def test_rerank_documents_as_objects_and_older_vllm_usage(setup: Any) -> None:
    vllm, _, gw, tmp = setup
    vllm.rerank_usage = "total"  # older vLLM: `usage: {total_tokens}` only
    docs = [{"text": d} for d in DOCS]
    r = post(gw, "/v1/rerank", {"model": "rank", "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 3
    rec = record(tmp, r.headers["x-gateway-request-id"])
    assert rec.attempts[0].usage == Usage(input_uncached=pair_tokens(DOCS))


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_passes_through_and_is_billed_as_input(setup: Any, path: str) -> None:
    vllm, _, gw, tmp = setup
    r = post(gw, path, {"model": "rank", "text_1": QUERY, "text_2": DOCS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "rank" and out["object"] == "list"
    assert [d["score"] for d in out["data"]] == [FakeOpenAI.relevance(QUERY, d) for d in DOCS]
    assert vllm.requests[-1].path == "/v1/score"
    rec = record(tmp, r.headers["x-gateway-request-id"])
    assert rec.endpoint == "score"
    assert rec.attempts[0].usage == Usage(input_uncached=pair_tokens(DOCS))


def test_rerank_falls_back_and_records_each_attempt(setup: Any) -> None:
    vllm, backup, gw, tmp = setup
    vllm.fail_next(1, status=503)
    r = post(gw, "/v1/rerank", {"model": "rank", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-deployment"] == "backup/bge-reranker-v2-m3"
    assert backup.requests[-1].body["model"] == "bge-reranker-v2-m3"
    rec = record(tmp, r.headers["x-gateway-request-id"])
    assert [(a.outcome, a.status) for a in rec.attempts] == [("error", 503), ("ok", 200)]
    assert rec.attempts[1].usage == Usage(input_uncached=pair_tokens(DOCS))


def test_the_keys_model_list_applies(setup: Any) -> None:
    _, _, gw, _ = setup
    body = {"model": "rank", "query": QUERY, "documents": DOCS}
    denied = post(gw, "/v1/rerank", body, key=CHAT_ONLY)
    assert denied.status_code == 403, denied.text
    assert denied.json()["error"]["message"] == \
        'Model "rank" is not available to this key. Available: chat.'
    unknown = post(gw, "/v1/score", {"model": "nope", "text_1": "a", "text_2": "b"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    anonymous = httpx.post(gw.base_url + "/rerank", json=body)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(("model", "says"), [
    ("claude", "has no deployment that serves /v1/rerank: 'ant/claude-sonnet-4-5' is on a "
               "`kind: anthropic` provider"),
    ("chat", "'oa/gpt-4o-mini' is on a `kind: openai` provider, which cannot serve it"),
])
def test_a_provider_kind_that_cannot_rerank_is_a_clear_400(setup: Any, model: str,
                                                            says: str) -> None:
    _, _, gw, tmp = setup
    r = post(gw, "/v1/rerank", {"model": model, "query": QUERY, "documents": DOCS})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert says in err["message"] and err["code"] == "unsupported_on_backend"
    rec = record(tmp, r.headers["x-gateway-request-id"])
    assert rec.status == 400 and rec.cost_usd == 0


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/rerank", {"model": "rank", "query": QUERY}, "documents"),
    ("/v1/rerank", {"model": "rank", "query": QUERY, "documents": []}, "documents"),
    ("/v1/rerank", {"model": "rank", "query": 3, "documents": DOCS}, "query"),
    ("/v1/rerank", {"model": "rank", "query": QUERY, "documents": [{"title": "x"}]},
     "documents[0].text"),
    ("/v1/rerank", {"model": "rank", "query": QUERY, "documents": DOCS, "stream": True},
     "stream"),
    ("/v1/score", {"model": "rank", "text_1": "a"}, "text_2"),
    ("/v1/score", {"model": "rank", "text_1": [1], "text_2": "b"}, "text_1[0]"),
])
def test_bad_bodies_are_400s_naming_the_field(setup: Any, path: str, body: dict[str, Any],
                                              param: str) -> None:
    _, _, gw, _ = setup
    r = post(gw, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_deployment_that_cannot_rerank_is_skipped_for_one_that_can(
        fakes: Any, gateway: Any, tmp_path: Any) -> None:
    """The planner-level rule: a model whose first deployment's kind has no /v1/rerank is
    served by its next deployment that does, rather than refused."""
    from tests.integration.conftest import provider, simple_policy

    ext, vllm = fakes("ext"), fakes("vllm", vllm=True)
    gw = gateway(simple_policy(
        tmp_path, {"ext": provider(ext, kind="openai", api_key="k"),
                   "vllm": provider(vllm, kind="vllm")},
        {"rank": {"type": "rerank", "deployments": [
            {"provider": "ext", "model": "m", "weight": 1000},
            {"provider": "vllm", "model": "bge-reranker", "weight": 1}]}}))
    r = httpx.post(gw.base_url + "/rerank", json={"model": "rank", "query": QUERY,
                                                  "documents": DOCS})
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-deployment"] == "vllm/bge-reranker"
    assert ext.bodies() == []
