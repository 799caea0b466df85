"""A tenant's request never reaches a model outside its list — not by fallback, not by context
fallback — and the error says a fallback was skipped (issue 8, item 8)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.keys import generate_key, hash_key
from tests.fakes.openai_fake import FakeOpenAI
from tests.integration.conftest import provider, simple_policy

LOCAL, ANY = generate_key(), generate_key()


@pytest.fixture
def env(fakes: Any, gateway: Any, tmp_path: Any) -> tuple[Any, FakeOpenAI, FakeOpenAI]:
    gpu = fakes("gpu", max_context=200)
    ext = fakes("ext")
    gw = gateway(simple_policy(
        tmp_path, {"gpu": provider(gpu), "ext": provider(ext)},
        {"llama-3-8b": {"deployments": [{"provider": "gpu", "model": "llama"}],
                        "fallbacks": ["gpt-4o-mini"], "context_fallbacks": ["gpt-4o-mini"]},
         "gpt-4o-mini": {"deployments": [{"provider": "ext", "model": "gpt-4o-mini",
                                          "pricing": [{"input": "1", "output": "1"}]}]}},
        router={"circuit_breaker": {"failures": 100}},
        tenants={"onprem": {"models": ["llama-3-8b"],
                            "keys": [{"id": "k-local", "hash": hash_key(LOCAL)}]},
                 "cloud": {"keys": [{"id": "k-any", "hash": hash_key(ANY)}]}}))
    return gw, gpu, ext


def _client(gw: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def test_fallback_outside_the_tenants_list_is_skipped_and_named(env: Any) -> None:
    gw, gpu, ext = env
    gpu.fail_next(10, status=503)
    with pytest.raises(openai.APIStatusError) as e:
        _client(gw, LOCAL).chat.completions.create(
            model="llama-3-8b", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    assert "'gpt-4o-mini' was skipped" in e.value.message and "may not use" in e.value.message
    assert ext.bodies() == []  # never reached
    # A tenant allowed both still falls back.
    ok = _client(gw, ANY).chat.completions.create(
        model="llama-3-8b", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content and len(ext.bodies()) == 1


def test_streams_skip_it_too(env: Any) -> None:
    gw, gpu, ext = env
    gpu.fail_next(10, status=500)
    with pytest.raises(openai.APIStatusError) as e:
        for _ in _client(gw, LOCAL).chat.completions.create(
                model="llama-3-8b", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    assert e.value.status_code == 502 and "skipped" in e.value.message
    assert ext.bodies() == []


def test_context_fallback_outside_the_list_is_skipped(env: Any) -> None:
    gw, _gpu, ext = env
    long = [{"role": "user", "content": "word " * 200}]
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, LOCAL).chat.completions.create(model="llama-3-8b", messages=long)
    assert e.value.code == "context_length_exceeded" and "skipped" in e.value.message
    assert ext.bodies() == []
    ok = _client(gw, ANY).chat.completions.create(model="llama-3-8b", messages=long)
    assert ok.choices[0].message.content and len(ext.bodies()) == 1


def test_admission_reserves_only_what_the_tenant_can_reach(fakes: Any, gateway: Any,
                                                           tmp_path: Any) -> None:
    """The budget hold is priced at the dearest deployment the request may land on — and a
    fallback the tenant may not use is not one of them."""
    gpu, ext = fakes("gpu"), fakes("ext")
    gw = gateway(simple_policy(
        tmp_path, {"gpu": provider(gpu), "ext": provider(ext)},
        {"llama-3-8b": {"deployments": [{"provider": "gpu", "model": "llama"}],
                        "fallbacks": ["gpt-4o"]},
         "gpt-4o": {"deployments": [{"provider": "ext", "model": "gpt-4o",
                                     "pricing": [{"input": "1000", "output": "1000"}]}]}},
        tenants={"onprem": {"models": ["llama-3-8b"], "budget": {"daily_usd": "0.001"},
                            "keys": [{"id": "k-local", "hash": hash_key(LOCAL)}]}}))
    ok = _client(gw, LOCAL).chat.completions.create(
        model="llama-3-8b", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content
