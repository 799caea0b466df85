"""The bare pass-through (the benchmark's floor) forwards a request and its reply unchanged,
for both HTTP clients, against a real fake upstream on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from bench.overhead.bare_passthrough import build_app
from tests.fakes.openai_fake import FakeOpenAI

BODY = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI("bench-upstream", words=3)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_forwards_a_completion_unchanged(upstream: FakeOpenAI, client: str) -> None:
    with TestClient(build_app(upstream.url + "/v1", client)) as tc:
        r = tc.post("/v1/chat/completions", content=json.dumps(BODY),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["object"] == "chat.completion"
    assert [rec.body for rec in upstream.requests] == [BODY]


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_forwards_a_stream_as_events(upstream: FakeOpenAI, client: str) -> None:
    with TestClient(build_app(upstream.url + "/v1", client)) as tc:
        r = tc.post("/v1/chat/completions", content=json.dumps({**BODY, "stream": True}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])
