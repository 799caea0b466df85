"""The exact response cache through the real gateway, with the official `openai` and
`anthropic` SDKs: a hit (streamed and not) never reaches the upstream and answers in the
client's shape; `Cache-Control` is honoured; tenant B never gets tenant A's answer; the ledger
records the hit as its own outcome at zero cost with the cost it saved, and the usage report
and `/v1/usage` show the saving per tenant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.accounting.records import RequestRecord
from gateway.accounting.reports import render_json, run_report
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy
from tests.integration.ledger_records import record
from tests.integration.tenancy_support import (
    MSG,
    PG_URL,
    REDIS_URL,
    LedgerDB,
    PolicyKey,
    fresh_prefix,
    fresh_schema,
    policy_key,
)

RATES = {"input": "1.5", "output": "4"}  # USD per million tokens
# The fake's usage: 11 prompt tokens, one completion token per word (5 words).
SAVED = (Decimal(11) * Decimal("1.5") + Decimal(5) * Decimal(4)) / Decimal(1_000_000)
TEXT = "Hello0 word1 word2 word3 word4"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI("oa").start()
    yield f
    f.stop()


@pytest.fixture
def keys() -> dict[str, PolicyKey]:
    return {"a": policy_key("key-a"), "b": policy_key("key-b")}


def _policy(tmp: Path, fake: FakeOpenAI, keys: dict[str, PolicyKey],
            **sections: Any) -> dict[str, Any]:
    return simple_policy(tmp, {"oa": {"kind": "openai-compatible", "base_url": fake.url + "/v1"}},
                         {"m": {"deployments": [{"provider": "oa", "model": "up-m",
                                                 "pricing": [RATES]}]},
                          "nocache": {"deployments": [{"provider": "oa", "model": "up-n"}],
                                      "cache": {"enabled": False}}},
                         tenants={t: {"keys": [k.entry()]} for t, k in keys.items()},
                         **{"cache": {"ttl_s": 60}, **sections})


@pytest.fixture
def gw(tmp_path: Path, fake: FakeOpenAI, keys: dict[str, PolicyKey]) -> Iterator[Gateway]:
    with Gateway(_policy(tmp_path, fake, keys), tmp=tmp_path) as g:
        yield g


def _client(gw: Gateway, key: PolicyKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key.key, max_retries=0, timeout=30)


def _ask(client: openai.OpenAI, rid: str, **kw: Any) -> tuple[str, str | None]:
    kw.setdefault("temperature", 0)
    headers = {"x-request-id": rid, **kw.pop("headers", {})}
    raw = client.chat.completions.with_raw_response.create(
        model=kw.pop("model", "m"), messages=MSG, extra_headers=headers, **kw)
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-gateway-cache")


def _chat_posts(fake: FakeOpenAI) -> int:
    return len(fake.bodies("/chat/completions"))


def test_hit_answers_without_upstream_streamed_and_not(gw: Gateway, fake: FakeOpenAI,
                                                       keys: dict[str, PolicyKey]) -> None:
    client = _client(gw, keys["a"])
    assert _ask(client, "c1") == (TEXT, "miss")
    assert _chat_posts(fake) == 1
    # Same request, keys in another order and `user` set: the same entry.
    raw = client.chat.completions.with_raw_response.create(
        temperature=0, messages=MSG, model="m", user="someone",
        extra_headers={"x-request-id": "c2"})
    assert raw.headers["x-gateway-cache"] == "hit"
    hit = raw.parse()
    assert hit.choices[0].message.content == TEXT
    assert hit.choices[0].finish_reason == "stop"
    assert hit.model == "m"
    assert hit.usage is not None and (hit.usage.prompt_tokens, hit.usage.completion_tokens) == (
        11, 5)
    # Streamed: replayed as chat.completion.chunk events; the usage chunk only when asked.
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=MSG, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-request-id": "c3"}) as r:
        assert r.headers["x-gateway-cache"] == "hit"
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = list(r.parse())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 16
    plain = list(client.chat.completions.create(model="m", messages=MSG, temperature=0,
                                                stream=True))
    assert all(c.usage is None for c in plain)
    assert _chat_posts(fake) == 1  # nothing but the first request reached the upstream

    first = record(gw.tmp, client_id="c1")
    hit_rec = record(gw.tmp, client_id="c2")
    _assert_hit(hit_rec)
    assert first.attempts[0].outcome == "ok" and first.cost_usd == SAVED
    assert first.saved_usd == 0
    streamed = record(gw.tmp, client_id="c3")
    _assert_hit(streamed)
    assert streamed.stream


def _assert_hit(rec: RequestRecord) -> None:
    assert rec.status == 200 and rec.error_code is None
    [a] = rec.attempts
    assert (a.outcome, a.provider, a.deployment) == ("cache_hit", "cache", "oa/up-m")
    assert a.usage is not None and (a.usage.prompt_tokens, a.usage.completion_tokens) == (11, 5)
    assert rec.cost_usd == 0 and a.cost_usd == 0
    assert rec.saved_usd == SAVED


def test_a_streamed_miss_is_stored_and_replayed(gw: Gateway, fake: FakeOpenAI,
                                                keys: dict[str, PolicyKey]) -> None:
    client = _client(gw, keys["a"])
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=MSG, seed=7, stream=True) as r:
        assert r.headers["x-gateway-cache"] == "miss"
        assert "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices) == TEXT
    assert _ask(client, "s2", seed=7, temperature=None) == (TEXT, "hit")
    assert _chat_posts(fake) == 1
    # The entry came from a stream whose client asked no usage: the hit still knows it.
    _assert_hit(record(gw.tmp, client_id="s2"))


def test_cache_control_and_what_is_not_cached(gw: Gateway, fake: FakeOpenAI,
                                              keys: dict[str, PolicyKey]) -> None:
    client = _client(gw, keys["a"])
    assert _ask(client, "n1", headers={"Cache-Control": "no-store"}) == (TEXT, "bypass")
    assert _ask(client, "n2") == (TEXT, "miss")  # no-store kept nothing
    assert _ask(client, "n3", headers={"Cache-Control": "no-cache"}) == (TEXT, "bypass")
    assert _chat_posts(fake) == 3  # no-cache asked upstream afresh
    assert _ask(client, "n4") == (TEXT, "hit")
    # Sampled (no temperature 0, no seed): not cached by default.
    assert _ask(client, "n5", temperature=0.7) == (TEXT, "bypass")
    assert _ask(client, "n6", temperature=0.7) == (TEXT, "bypass")
    # A model whose rule turns the cache off: no header at all.
    assert _ask(client, "n7", model="nocache") == (TEXT, None)
    assert _ask(client, "n8", model="nocache") == (TEXT, None)
    assert _chat_posts(fake) == 7
    bypassed = record(gw.tmp, client_id="n3")
    assert [a.outcome for a in bypassed.attempts] == ["ok"]


def test_tenant_b_never_gets_tenant_as_answer(gw: Gateway, fake: FakeOpenAI,
                                              keys: dict[str, PolicyKey]) -> None:
    a, b = _client(gw, keys["a"]), _client(gw, keys["b"])
    assert _ask(a, "t1")[1] == "miss"
    assert _ask(b, "t2")[1] == "miss"
    assert _ask(b, "t3")[1] == "hit"
    assert _ask(a, "t4")[1] == "hit"
    assert _chat_posts(fake) == 2
    assert record(gw.tmp, client_id="t3").tenant == "b"


def test_report_and_own_usage_show_saved_cost(gw: Gateway, keys: dict[str, PolicyKey]) -> None:
    a = _client(gw, keys["a"])
    for rid in ("r1", "r2", "r3"):  # one miss, two hits
        _ask(a, rid)
    for rid in ("r1", "r2", "r3"):
        record(gw.tmp, client_id=rid)
    today = datetime.now(UTC).date()
    report = json.loads(render_json(run_report(gw.policy.ledger.url, today, today)))
    [saving] = report["cache_savings"]
    assert (saving["tenant"], saving["cache_hits"]) == ("a", 2)
    assert Decimal(saving["saved_usd"]) == 2 * SAVED  # exact: the decimal text, not a float
    assert Decimal(report["totals"]["saved_usd"]) == 2 * SAVED
    assert Decimal(report["totals"]["token_cost_usd"]) == SAVED  # only the miss cost anything
    own = httpx.get(gw.base_url + "/usage", headers={"Authorization": f"Bearer {keys['a'].key}"},
                    timeout=30).json()
    assert own["cache_savings"] == report["cache_savings"]
    other = httpx.get(gw.base_url + "/usage",
                      headers={"Authorization": f"Bearer {keys['b'].key}"}, timeout=30).json()
    assert other["cache_savings"] == []


def test_anthropic_messages_hit_streamed_and_not(gw: Gateway, fake: FakeOpenAI,
                                                 keys: dict[str, PolicyKey]) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=keys["a"].key, max_retries=0)
    ask: dict[str, Any] = {"model": "m", "max_tokens": 50, "extra_body": {"temperature": 0},
                           "messages": [{"role": "user", "content": "hi"}]}
    first = client.messages.with_raw_response.create(**ask)
    assert first.headers["x-gateway-cache"] == "miss"
    hit = client.messages.with_raw_response.create(**ask)
    assert hit.headers["x-gateway-cache"] == "hit"
    msg = hit.parse()
    assert msg.type == "message" and msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text == TEXT
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 5)
    with client.messages.stream(**ask) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT and final.usage.output_tokens == 5
    assert _chat_posts(fake) == 1


def test_two_replicas_share_a_redis_cache_and_a_postgres_ledger(
        tmp_path: Path, fake: FakeOpenAI, keys: dict[str, PolicyKey]) -> None:
    for prefix, schema in zip(fresh_prefix(), fresh_schema(), strict=True):
        policy = _policy(tmp_path, fake, keys, state={"redis_url": REDIS_URL,
                                                      "key_prefix": prefix},
                         cache={"backend": "redis", "ttl_s": 60})
        policy["ledger"] = {"url": PG_URL, "schema": schema,
                            "spill_path": str(tmp_path / "spill.jsonl"),
                            "flush_interval_s": 0.05}
        one_dir, two_dir = tmp_path / "one", tmp_path / "two"
        one_dir.mkdir()
        two_dir.mkdir()
        with Gateway(policy, tmp=one_dir) as one, Gateway(policy, tmp=two_dir) as two:
            assert _ask(_client(one, keys["a"]), "x1")[1] == "miss"
            assert _ask(_client(two, keys["a"]), "x2") == (TEXT, "hit")
            assert _ask(_client(two, keys["b"]), "x3")[1] == "miss"
            assert _ask(_client(one, keys["b"]), "x4")[1] == "hit"
            assert _chat_posts(fake) == 2  # one upstream call per tenant, across replicas
            db = LedgerDB(schema)
            hit = db.wait_request("x2")
            assert Decimal(hit["saved_usd"]) == SAVED and Decimal(hit["cost_usd"]) == 0
            [a] = db.attempts("x2")
            assert (a["outcome"], a["provider"], Decimal(a["cost_usd"])) == (
                "cache_hit", "cache", 0)
            db.wait_request("x4")
            today = datetime.now(UTC).date()
            report = run_report(PG_URL, today, today, schema=schema)
            assert {t: (s.hits, s.saved_usd) for t, s in report.savings.items()} == {
                "a": (1, SAVED), "b": (1, SAVED)}


def test_a_reply_cut_by_length_is_not_stored(gw: Gateway, fake: FakeOpenAI,
                                             keys: dict[str, PolicyKey]) -> None:
    client = _client(gw, keys["a"])
    fake.finish_reason = "length"
    assert _ask(client, "l1", max_tokens=5)[1] == "miss"
    list(client.chat.completions.create(model="m", messages=MSG, temperature=0, max_tokens=5,
                                        stream=True))
    fake.finish_reason = "stop"
    assert _ask(client, "l2", max_tokens=5)[1] == "miss"  # neither cut reply was kept
    assert _chat_posts(fake) == 3
    assert _ask(client, "l3", max_tokens=5)[1] == "hit"
