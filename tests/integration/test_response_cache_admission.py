"""A cache hit through the real gateway still passes everything a request passes before it is
answered: the tenant's request rate (429) and budget (402: a block refuses hits too), and the
guards' input checks (a blocked prompt is never answered from cache). And the journal: a hit
answered from the memory cache is journaled once, as its final record (no admission marker:
nothing can fall between its admission and that record), while a request that awaits I/O
(upstream, a Redis lookup) is marked first, so `kill -9` mid-request still leaves its line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy
from tests.integration.ledger_records import record
from tests.integration.tenancy_support import (
    MSG,
    REDIS_URL,
    PolicyKey,
    fresh_prefix,
    policy_key,
)

RATES = {"input": "1.5", "output": "4"}  # USD per million tokens


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI("oa").start()
    yield f
    f.stop()


def _policy(tmp: Path, fake: FakeOpenAI, tenants: dict[str, Any], **sections: Any
            ) -> dict[str, Any]:
    return simple_policy(tmp, {"oa": {"kind": "openai-compatible", "base_url": fake.url + "/v1"}},
                         {"m": {"deployments": [{"provider": "oa", "model": "up-m",
                                                 "pricing": [RATES]}]}},
                         tenants=tenants, **{"cache": {"ttl_s": 60}, **sections})


def _ask(gw: Gateway, key: PolicyKey, rid: str, content: str = "hi",
         **kw: Any) -> tuple[int, str | None, dict[str, Any]]:
    client = openai.OpenAI(base_url=gw.base_url, api_key=key.key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": content}] if content != "hi" else MSG
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=messages, temperature=0,  # type: ignore[arg-type]
            extra_headers={"x-request-id": rid}, **kw)
    except openai.APIStatusError as e:
        return e.status_code, e.response.headers.get("x-gateway-cache"), e.response.json()
    return raw.status_code, raw.headers.get("x-gateway-cache"), json.loads(raw.content)


def _posts(fake: FakeOpenAI) -> int:
    return len(fake.bodies("/chat/completions"))


def test_a_tenant_over_its_request_rate_gets_429_even_for_a_hit(
        tmp_path: Path, fake: FakeOpenAI) -> None:
    key = policy_key("k")
    policy = _policy(tmp_path, fake, {"t": {"keys": [key.entry()], "limits": {"rpm": 2}}})
    with Gateway(policy, tmp=tmp_path) as gw:
        assert _ask(gw, key, "r1")[:2] == (200, "miss")
        assert _ask(gw, key, "r2")[:2] == (200, "hit")
        status, cache, body = _ask(gw, key, "r3")
        assert status == 429 and cache is None  # refused at admission, never looked up
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert _posts(fake) == 1
        refused = record(gw.tmp, client_id="r3")
        assert (refused.status, refused.attempts) == (429, [])


def test_a_block_on_an_exhausted_budget_refuses_hits_too(tmp_path: Path,
                                                         fake: FakeOpenAI) -> None:
    # The miss costs 11 × 1.5 + 5 × 4 = 36.5 µUSD; its worst case (a 5-token cap) fits in
    # 60 µUSD, and the next request's worst case no longer fits in what is left. A hit would
    # cost nothing, but the budget decides before the cache is asked: an out-of-budget tenant
    # gets the same 402 whatever happens to be cached.
    key = policy_key("k")
    policy = _policy(tmp_path, fake, {"t": {"keys": [key.entry()], "budget": {
        "monthly_usd": "0.00006", "on_exceed": "block"}}})
    with Gateway(policy, tmp=tmp_path) as gw:
        assert _ask(gw, key, "b1", max_tokens=5)[:2] == (200, "miss")
        record(gw.tmp, client_id="b1")  # settled: its spend counts
        status, cache, body = _ask(gw, key, "b2", max_tokens=5)
        assert (status, cache, body["error"]["code"]) == (402, None, "budget_exceeded")
        assert _posts(fake) == 1


def test_a_guard_blocks_a_prompt_before_the_cache_could_answer_it(
        tmp_path: Path, fake: FakeOpenAI) -> None:
    # Tenants share entries here; the guard applies to tenant b alone, so a's answer to the
    # prompt is in the cache when b asks it.
    a, b = policy_key("ka"), policy_key("kb")
    policy = _policy(tmp_path, fake, {"a": {"keys": [a.entry()]}, "b": {"keys": [b.entry()]}},
                     cache={"ttl_s": 60, "share_across_tenants": True},
                     guards={"order-ids": {"detector": {"kind": "regex",
                                                        "patterns": [r"ORD-\d{6}"]},
                                           "applies_to": {"tenants": ["b"]}}})
    prompt = "where is ORD-123456?"
    with Gateway(policy, tmp=tmp_path) as gw:
        assert _ask(gw, a, "g1", prompt)[:2] == (200, "miss")
        assert _ask(gw, a, "g2", prompt)[:2] == (200, "hit")
        status, _cache, body = _ask(gw, b, "g3", prompt)
        assert status == 400 and body["error"]["code"] == "content_policy_violation"
        assert _ask(gw, b, "g4")[:2] == (200, "miss")  # b's other prompts are cached
        assert _posts(fake) == 2
        assert record(gw.tmp, client_id="g3").status == 400


def _journal_lines(tmp: Path, request_id: str) -> list[dict[str, Any]]:
    lines = []
    for seg in sorted((tmp / "journal").glob("journal-*.jsonl")):
        for raw in seg.read_bytes().rstrip(b"\0").splitlines():
            raw = raw.strip(b"\0")
            if raw:
                obj = json.loads(raw)
                if obj["request_id"] == request_id:
                    lines.append(obj)
    return lines


def _journaled(gw: Gateway, rid: str) -> list[tuple[int, str | None]]:
    rec = record(gw.tmp, client_id=rid)  # the final line is in the journal before the reply
    return [(o["status"], o["error_code"]) for o in _journal_lines(gw.tmp, rec.request_id)]


def test_a_memory_hit_is_journaled_once_a_miss_and_a_redis_hit_are_marked_first(
        tmp_path: Path, fake: FakeOpenAI) -> None:
    key = policy_key("k")
    tenants = {"t": {"keys": [key.entry()]}}
    with Gateway(_policy(tmp_path, fake, tenants), tmp=tmp_path) as gw:
        assert _ask(gw, key, "j1")[:2] == (200, "miss")
        assert _ask(gw, key, "j2")[:2] == (200, "hit")
        marker = (500, "gateway_interrupted")
        assert _journaled(gw, "j1") == [marker, (200, None)]
        assert _journaled(gw, "j2") == [(200, None)]
    for prefix in fresh_prefix():
        redis_dir = tmp_path / "redis"
        redis_dir.mkdir()
        policy = _policy(redis_dir, fake, tenants, cache={"backend": "redis", "ttl_s": 60},
                         state={"redis_url": REDIS_URL, "key_prefix": prefix})
        with Gateway(policy, tmp=redis_dir) as gw:
            assert _ask(gw, key, "j3")[:2] == (200, "miss")
            assert _ask(gw, key, "j4")[:2] == (200, "hit")
            # The lookup awaits Redis: the marker was journaled before it.
            assert _journaled(gw, "j4") == [marker, (200, None)]
