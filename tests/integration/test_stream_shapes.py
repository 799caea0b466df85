"""Clients always get OpenAI's stream shape, and a stream stays replaceable until content exists:
the official `openai` SDK through the gateway to the OpenAI and Azure fakes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.azure_fake import FakeAzure
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy

MSG = [{"role": "user", "content": "Count to 5"}]
TEXT = "Hello0 word1 word2 word3 word4"
AZ_KEY = "azure-fake-key-0123456789"


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def readme_loop(gw: Gateway, model: str) -> str:
    """The README's streaming loop, as written there."""
    out = []
    for chunk in client(gw).chat.completions.create(model=model, messages=MSG, stream=True):
        out.append(chunk.choices[0].delta.content or "")
    return "".join(out)


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in body.split(b"\n\n")
            if e.startswith(b"data: {")]


@pytest.fixture
def azure_pair(fakes: Callable[..., FakeOpenAI],
               tmp_path: Any) -> Iterator[tuple[FakeAzure, FakeOpenAI, Gateway]]:
    backup = fakes("backup")
    with FakeAzure() as az:
        policy = simple_policy(tmp_path, {
            "az": {"kind": "azure", "base_url": az.url, "api_key": AZ_KEY},
            "backup": provider(backup)}, {
            "gpt-4o": {"deployments": [{"provider": "az", "model": "gpt4o-prod"}],
                       "fallbacks": ["backup"]},
            "backup": {"deployments": [{"provider": "backup", "model": "m"}]}})
        with Gateway(policy, tmp=tmp_path) as gw:
            yield az, backup, gw


def test_readme_loop_reads_an_azure_stream(azure_pair: Any) -> None:
    az, _, gw = azure_pair
    assert readme_loop(gw, "gpt-4o") == TEXT
    # Azure's prompt_filter_results still reach clients that look for them, on the first chunk.
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={
            "model": "gpt-4o", "messages": MSG, "stream": True}) as r:
        chunks = sse_chunks(r.read())
    assert all(c["choices"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["prompt_filter_results"][0]["prompt_index"] == 0
    assert az.requests[-1].body["stream_options"] == {"include_usage": True}


def test_azure_stream_with_usage_asked_has_only_the_usage_chunk_without_choices(
        azure_pair: Any) -> None:
    _, _, gw = azure_pair
    chunks = list(client(gw).chat.completions.create(
        model="gpt-4o", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert [c.usage is not None for c in chunks if not c.choices] == [True]
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == TEXT


def test_azure_stream_dropped_after_filter_and_role_chunks_falls_back(azure_pair: Any) -> None:
    az, backup, gw = azure_pair
    az.drop_stream_after(2)  # the prompt_filter_results chunk and the role chunk, then gone
    assert readme_loop(gw, "gpt-4o") == TEXT
    assert len(az.requests) == 1 and len(backup.requests) == 1


@pytest.fixture
def pair(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway],
         tmp_path: Any) -> tuple[FakeOpenAI, FakeOpenAI, Gateway]:
    a, b = fakes("a"), fakes("b")
    gw = gateway(simple_policy(tmp_path, {"a": provider(a), "b": provider(b)}, {
        "chat": {"deployments": [{"provider": "a", "model": "m"},
                                 {"provider": "b", "model": "m", "weight": 0.000001}]}},
        router={"max_attempts": 2}))
    return a, b, gw


def test_stream_dropped_after_only_the_role_chunk_falls_back(pair: Any) -> None:
    a, b, gw = pair
    a.drop_stream_after(1)  # the role chunk reaches the gateway, then the connection drops
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={
            "model": "chat", "messages": MSG, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["x-gateway-deployment"] == "b/m"
        assert r.headers["x-gateway-attempts"] == "2"
        body = r.read()
    # One clean stream, all of it from the second deployment: one role chunk, the text once.
    chunks = sse_chunks(body)
    assert [c["choices"][0]["delta"].get("role") for c in chunks].count("assistant") == 1
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == TEXT
    assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
    assert len(a.requests) == 1 and len(b.requests) == 1


def test_stream_dropped_after_the_role_chunk_falls_back_for_the_sdk(pair: Any) -> None:
    a, b, gw = pair
    a.drop_stream_after(1)
    assert readme_loop(gw, "chat") == TEXT
    assert len(b.requests) == 1
