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


RESPONSES_BODY = {"model": "m", "input": "Hello", "max_output_tokens": 8}


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_forwards_a_responses_request_to_the_upstreams_responses_path(
        upstream: FakeOpenAI, client: str) -> None:
    with TestClient(build_app(upstream.url + "/v1", client)) as tc:
        r = tc.post("/v1/responses", content=json.dumps(RESPONSES_BODY),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.json()["object"] == "response"
    assert [(rec.path, rec.body) for rec in upstream.requests] == [
        ("/v1/responses", RESPONSES_BODY)]


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_forwards_a_responses_stream_as_typed_events(upstream: FakeOpenAI, client: str) -> None:
    with TestClient(build_app(upstream.url + "/v1", client)) as tc:
        r = tc.post("/v1/responses", content=json.dumps({**RESPONSES_BODY, "stream": True}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    names = [ln[7:] for ln in r.text.splitlines() if ln.startswith("event: ")]
    types = [json.loads(ln[6:])["type"] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert names == types
    assert names[0] == "response.created" and names[-1] == "response.completed"
