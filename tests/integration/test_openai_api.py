"""The official openai SDK, sync and async, streaming and not, against the gateway."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.integration.conftest import provider, simple_policy


@pytest.fixture
def setup(fakes, gateway, tmp_path):
    up = fakes("up", words=4)
    gw = gateway(simple_policy(tmp_path, {"up": provider(up)}, {
        "chat": {"deployments": [{"provider": "up", "model": "upstream-llama"}]},
        "embed": {"type": "embedding",
                  "deployments": [{"provider": "up", "model": "upstream-embed"}]},
    }))
    return up, gw


def test_chat_non_streaming_sync(setup) -> None:
    up, gw = setup
    client = openai.OpenAI(base_url=gw.base_url, api_key="anything")
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello0 word1 word2 word3"
    assert r.model == "chat"  # the name the client asked for, not the upstream's
    assert r.usage is not None and r.usage.prompt_tokens == 11
    assert up.requests[-1].body["model"] == "upstream-llama"


def test_body_passes_through_with_unknown_fields(setup) -> None:
    up, gw = setup
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.3, "x_custom": {"nested": [1, 2]}, "logit_bias": {"50256": -100}}
    r = httpx.post(gw.base_url + "/chat/completions", json=body)
    assert r.status_code == 200
    sent = up.requests[-1].body
    assert sent == {**body, "model": "upstream-llama"}
    assert r.headers["x-gateway-deployment"] == "up/upstream-llama"
    assert r.headers["x-gateway-attempts"] == "1"
    # Provider-specific response fields survive.
    assert r.json()["x_fake_server"] == "up"


def test_chat_streaming_sync_without_client_usage(setup) -> None:
    up, gw = setup
    client = openai.OpenAI(base_url=gw.base_url, api_key="k")
    chunks = list(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello0 word1 word2 word3"
    assert all(c.model == "chat" for c in chunks)
    # The gateway asked upstream for usage, and hid it: no usage chunk, no usage field at all.
    assert up.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(c.usage is None and c.choices for c in chunks)


def test_raw_stream_is_identical_to_upstream_but_model(setup) -> None:
    up, gw = setup
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body) as r:
        got = b"".join(r.iter_bytes())
    assert r.headers["content-type"].startswith("text/event-stream")
    direct = httpx.post(up.url + "/v1/chat/completions",
                        json={**body, "model": "upstream-llama"}).content
    strip = [json.loads(line[6:]) | {"created": 0} if line != b"data: [DONE]" else line
             for line in got.split(b"\n\n") if line]
    want = [json.loads(line[6:]) | {"created": 0, "model": "chat"} if line != b"data: [DONE]"
            else line for line in direct.split(b"\n\n") if line]
    assert strip == want
    assert b'"usage":' in got


@pytest.mark.asyncio
async def test_chat_async_stream_and_non_stream(setup) -> None:
    _, gw = setup
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="k")
    r = await client.chat.completions.create(model="chat",
                                             messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].finish_reason == "stop"
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True})
    usage = None
    parts = []
    async for c in stream:
        if c.usage:
            usage = c.usage
        if c.choices:
            parts.append(c.choices[0].delta.content or "")
    assert "".join(parts) == "Hello0 word1 word2 word3"
    assert usage is not None and usage.completion_tokens == 4
    results = await asyncio.gather(*[
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
        for _ in range(20)])
    assert len(results) == 20
    await client.close()


def test_completions_and_embeddings(setup) -> None:
    up, gw = setup
    client = openai.OpenAI(base_url=gw.base_url, api_key="k")
    c = client.completions.create(model="chat", prompt="Say hi")
    assert c.choices[0].text.startswith("Hello0") and c.model == "chat"
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="chat", prompt="Say hi", stream=True) if ch.choices)
    assert streamed == "Hello0 word1 word2 word3"
    e = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(e.data) == 2 and e.model == "embed"
    assert up.requests[-1].path == "/v1/embeddings"
    assert up.requests[-1].body["model"] == "upstream-embed"


def test_models_list_and_retrieve(setup) -> None:
    _, gw = setup
    client = openai.OpenAI(base_url=gw.base_url, api_key="k")
    assert sorted(m.id for m in client.models.list()) == ["chat", "embed"]
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_health_and_ready(setup) -> None:
    _, gw = setup
    assert httpx.get(gw.url + "/health").json() == {"status": "ok"}
    r = httpx.get(gw.url + "/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert "gateway_requests_total" in httpx.get(gw.url + "/metrics").text
