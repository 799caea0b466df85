"""The response cache on the other APIs, through the real gateway with the official SDKs:
`POST /v1/responses` (translated to a chat backend and passed through natively), and native
Anthropic Messages pass-through — a miss is stored (streamed or not), a hit answers in the
client's own shape without reaching the upstream (JSON, or the typed event stream the SDK's
stream helper accumulates), a Responses hit is stored under a fresh id for
`previous_response_id` (with `store: false` nothing is kept, in either store), tenants never
share a Responses entry, a policy reload keeps the memory cache, and the cache's series are on
/metrics."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from gateway.keys import generate_key, hash_key
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import record

RATES = [{"input": "1.5", "output": "4"}]
# The installed anthropic SDK no longer takes `temperature` as an argument; the API does.
T0 = {"temperature": 0}


def _policy(tmp_path: Path, chat: FakeOpenAI, native: FakeOpenAI, ant: Any) -> dict[str, Any]:
    return simple_policy(
        tmp_path,
        {"chat": provider(chat), "native": provider(native, kind="openai", api_key="sk-n"),
         "ant": {"kind": "anthropic", "base_url": ant.url + "/v1", "api_key": ant.api_key}},
        {"tr": {"deployments": [{"provider": "chat", "model": "llama", "pricing": RATES}]},
         "gpt": {"deployments": [{"provider": "native", "model": "gpt-4o-mini",
                                  "pricing": RATES}]},
         "claude": {"deployments": [{"provider": "ant", "model": "claude-x",
                                     "pricing": RATES}]}},
        cache={"ttl_s": 60})


@pytest.fixture
def env(fakes: Callable[..., FakeOpenAI], gateway: Any,
        tmp_path: Path) -> Iterator[tuple[Gateway, FakeOpenAI, FakeOpenAI, Any]]:
    chat = fakes("chat-only")
    native = fakes("native")
    ant = FakeAnthropic("ant").start()
    gw = gateway(_policy(tmp_path, chat, native, ant))
    yield gw, chat, native, ant
    ant.stop()


def _oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0, timeout=20)


def _create(gw: Gateway, rid: str, **kw: Any) -> tuple[Any, str | None]:
    kw.setdefault("temperature", 0)
    headers = {"x-request-id": rid, **kw.pop("extra_headers", {})}
    raw = _oa(gw).responses.with_raw_response.create(extra_headers=headers, **kw)
    return raw.parse(), raw.headers.get("x-gateway-cache")


def _stream(gw: Gateway, **kw: Any) -> tuple[Any, list[str], str | None]:
    kw.setdefault("temperature", 0)
    with _oa(gw).responses.stream(**kw) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
        header = s._response.headers.get("x-gateway-cache")
    return final, deltas, header


def _posts(fake: FakeOpenAI, path: str) -> int:
    return len(fake.bodies(path))


@pytest.mark.parametrize(("model", "path"), [("tr", "/chat/completions"),
                                             ("gpt", "/responses")])
def test_responses_hits_answer_in_responses_shape_streamed_and_not(
        env: Any, model: str, path: str) -> None:
    gw, chat, native, _ = env
    fake = chat if model == "tr" else native
    first, h1 = _create(gw, f"{model}-1", model=model, input="Say hello")
    assert h1 == "miss" and first.output_text
    hit, h2 = _create(gw, f"{model}-2", model=model, input="Say hello", user="someone")
    assert h2 == "hit" and _posts(fake, path) == 1
    assert hit.output_text == first.output_text and hit.status == "completed"
    assert hit.id != first.id and hit.id.startswith("resp_") and hit.model == model
    assert hit.usage is not None and hit.usage.output_tokens == first.usage.output_tokens
    # Streamed: the typed events the SDK's helper accumulates, sequence numbers and all.
    final, deltas, h3 = _stream(gw, model=model, input="Say hello")
    assert h3 == "hit" and "".join(deltas) == final.output_text == first.output_text
    assert final.id not in (first.id, hit.id)
    assert _posts(fake, path) == 1
    rec = record(gw.tmp, client_id=f"{model}-2")
    [a] = rec.attempts
    assert a.outcome == "cache_hit" and rec.cost_usd == 0 and rec.saved_usd > 0


@pytest.mark.parametrize(("model", "path"), [("tr", "/chat/completions"),
                                             ("gpt", "/responses")])
def test_a_streamed_responses_miss_is_stored(env: Any, model: str, path: str) -> None:
    gw, chat, native, _ = env
    fake = chat if model == "tr" else native
    final, deltas, header = _stream(gw, model=model, input="Stream me")
    assert header == "miss" and "".join(deltas) == final.output_text
    hit, h = _create(gw, f"{model}-s2", model=model, input="Stream me")
    assert h == "hit" and hit.output_text == final.output_text
    assert _posts(fake, path) == 1


def test_a_stored_hit_continues_and_store_false_keeps_nothing(env: Any) -> None:
    gw, chat, _, _ = env
    first, _ = _create(gw, "c1", model="tr", input="My name is Ada.")
    hit, h = _create(gw, "c2", model="tr", input="My name is Ada.")
    assert h == "hit"
    # The hit was stored under its own id: a follow-up naming it rebuilds the conversation.
    got = _oa(gw).responses.retrieve(hit.id)
    assert got.id == hit.id and got.output_text == hit.output_text
    follow, fh = _create(gw, "c3", model="tr", input="What is my name?",
                         previous_response_id=hit.id)
    assert fh == "miss" and follow.previous_response_id == hit.id
    sent = chat.bodies("/chat/completions")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == hit.output_text
    # The same conversation continued from the first response: keyed on what was said, not
    # on the id, so it is a hit.
    again, ah = _create(gw, "c4", model="tr", input="What is my name?",
                        previous_response_id=first.id)
    assert ah == "hit" and again.output_text == follow.output_text
    assert again.previous_response_id == first.id
    assert len(chat.bodies("/chat/completions")) == 2
    # `store: false`: answered from cache, stored nowhere.
    unstored, uh = _create(gw, "c5", model="tr", input="My name is Ada.", store=False)
    assert uh == "hit"
    with pytest.raises(openai.NotFoundError):
        _oa(gw).responses.retrieve(unstored.id)
    # …and its own answer is never written to the cache.
    posts = len(chat.bodies("/chat/completions"))
    for rid in ("c6", "c7"):
        _, mh = _create(gw, rid, model="tr", input="Forget this.", store=False)
        assert mh == "miss"
    _, later = _create(gw, "c8", model="tr", input="Forget this.")
    assert later == "miss" and len(chat.bodies("/chat/completions")) == posts + 3


def _ant(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)


def test_native_anthropic_replies_are_stored_and_replayed(env: Any) -> None:
    gw, _, _, ant = env
    msgs: Any = [{"role": "user", "content": "Say hello"}]
    raw = _ant(gw).messages.with_raw_response.create(
        model="claude", max_tokens=50, extra_body=T0, messages=msgs)
    first: Any = raw.parse()
    assert raw.headers["x-gateway-cache"] == "miss"
    raw = _ant(gw).messages.with_raw_response.create(
        model="claude", max_tokens=50, extra_body=T0, messages=msgs,
        extra_headers={"x-request-id": "ant-hit"})
    hit: Any = raw.parse()
    assert raw.headers["x-gateway-cache"] == "hit"
    assert hit.content[0].text == first.content[0].text and hit.stop_reason == "end_turn"
    assert hit.id != first.id and hit.model == "claude"
    assert hit.usage.output_tokens == first.usage.output_tokens
    with _ant(gw).messages.stream(model="claude", max_tokens=50, extra_body=T0,
                                  messages=msgs) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == first.content[0].text and final.stop_reason == "end_turn"
    assert len(ant.bodies("/messages")) == 1
    assert record(gw.tmp, client_id="ant-hit").attempts[0].outcome == "cache_hit"
    # A streamed miss is assembled and stored too.
    other: Any = [{"role": "user", "content": "Stream hello"}]
    with _ant(gw).messages.stream(model="claude", max_tokens=50, extra_body=T0,
                                  messages=other) as s:
        streamed: Any = s.get_final_message()
    raw = _ant(gw).messages.with_raw_response.create(
        model="claude", max_tokens=50, extra_body=T0, messages=other)
    assert raw.headers["x-gateway-cache"] == "hit"
    again: Any = raw.parse()
    assert again.content[0].text == streamed.content[0].text
    assert len(ant.bodies("/messages")) == 2


def _series(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_cache_series_on_metrics(env: Any) -> None:
    gw = env[0]
    _create(gw, "m1", model="tr", input="Count me")
    _create(gw, "m2", model="tr", input="Count me")
    _create(gw, "m3", model="tr", input="Count me", temperature=0.7)
    _create(gw, "m4", model="tr", input="Count me",
            extra_headers={"cache-control": "no-cache"})
    text = httpx.get(gw.url + "/metrics").text
    assert _series(text, "gateway_cache_lookups_total", model="tr", result="hit") == 1
    assert _series(text, "gateway_cache_lookups_total", model="tr", result="miss",
                   reason="absent") == 1
    assert _series(text, "gateway_cache_lookups_total", model="tr", result="bypass",
                   reason="nondeterministic") == 1
    assert _series(text, "gateway_cache_lookups_total", model="tr", result="bypass",
                   reason="no_cache") == 1
    assert _series(text, "gateway_cache_stores_total", model="tr", result="stored") == 2
    assert re.search(r"^gateway_cache_entries 1\.0$", text, re.M)
    assert re.search(r"^gateway_cache_bytes [1-9]", text, re.M)
    saved = _series(text, "gateway_cache_saved_usd_total", model="tr", tenant="default")
    assert saved == pytest.approx(float(record(gw.tmp, client_id="m2").saved_usd))


def test_a_policy_reload_keeps_the_memory_cache(env: Any, tmp_path: Path) -> None:
    gw, chat, native, ant = env
    _create(gw, "r1", model="tr", input="Keep me")
    policy = _policy(tmp_path, chat, native, ant)
    policy["models"]["extra"] = {"deployments": [{"provider": "chat", "model": "other"}]}
    gw.policy_path.write_text(yaml.safe_dump(policy))
    assert wait_until(lambda: any(m.id == "extra" for m in _oa(gw).models.list()), timeout=10)
    _, h = _create(gw, "r2", model="tr", input="Keep me")
    assert h == "hit" and len(chat.bodies("/chat/completions")) == 1


def test_tenants_never_share_responses_hits(fakes: Callable[..., FakeOpenAI], gateway: Any,
                                            tmp_path: Path) -> None:
    chat, native = fakes("chat-t"), fakes("native-t")
    ant = FakeAnthropic("ant-t").start()
    try:
        keys = {t: generate_key() for t in ("a", "b")}
        policy = _policy(tmp_path, chat, native, ant)
        policy["tenants"] = {t: {"keys": [{"id": f"k{t}", "hash": hash_key(k)}]}
                             for t, k in keys.items()}
        gw = gateway(policy)

        def ask(tenant: str) -> tuple[Any, str | None]:
            raw = openai.OpenAI(base_url=gw.base_url, api_key=keys[tenant], max_retries=0,
                                timeout=20).responses.with_raw_response.create(
                model="gpt", input="Tenant secret?", temperature=0)
            return raw.parse(), raw.headers.get("x-gateway-cache")

        assert ask("a")[1] == "miss"
        assert ask("a")[1] == "hit"
        hit_b = ask("b")
        assert hit_b[1] == "miss"  # tenant B never gets tenant A's entry
        assert len(native.bodies("/responses")) == 2
    finally:
        ant.stop()
