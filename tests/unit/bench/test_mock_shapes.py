"""The benchmark's mock upstreams speak the wire formats the proxies expect: the openai SDK
reads their chat completions and Responses (objects and typed event streams), served for
real on loopback — the SSE mock in a thread, nginx from the benchmark's own config."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from bench.overhead import mock_nginx, responses_wire
from bench.overhead.apis import CHAT, RESPONSES
from bench.overhead.mock_sse import responses_stream, stream_events
from bench.overhead.procs import free_port
from tests.unit.bench.mock_server import SSEServer

CHUNKS = 6
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def sse() -> Iterator[openai.OpenAI]:
    with SSEServer(CHUNKS) as server, openai.OpenAI(
            base_url=server.url, api_key="sk-bench",
            max_retries=0) as client:
        yield client


def _wire_events(client: openai.OpenAI, model: str) -> list[tuple[str, dict[str, object]]]:
    """The stream's raw SSE events, as (the `event:` line, the parsed `data`)."""
    body = json.loads(RESPONSES.stream_body(model, None))
    events = []
    with httpx.stream("POST", str(client.base_url) + "responses", json=body) as r:
        assert r.headers["content-type"] == "text/event-stream"
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def test_responses_stream_is_typed_events_the_sdk_reads(sse: openai.OpenAI) -> None:
    with sse.responses.create(model="bench-responses-stream", input="Count to twenty.",
                              stream=True) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added",
                     *["response.output_text.delta"] * (CHUNKS - 1),
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text == "".join(f" tok{i}" for i in range(1, CHUNKS))
    assert final.model == "bench-responses-stream" and final.status == "completed"
    assert final.usage is not None
    assert final.usage.output_tokens == CHUNKS - 1
    assert final.usage.input_tokens_details.cached_tokens == 0
    assert final.usage.output_tokens_details.reasoning_tokens == 0


def test_each_streamed_event_validates_against_the_sdk_schema(sse: openai.OpenAI) -> None:
    # The SDK's stream reader builds models without validating: each event is checked here.
    events = _wire_events(sse, "bench-responses-stream")
    for name, data in events:
        assert EVENTS.validate_python(data).type == name
    assert b"[DONE]" not in json.dumps(events).encode()  # Responses streams end with the event


def test_responses_stream_has_the_chat_stream_clock() -> None:
    # One batch after the first delay, then one delta per delay: time to the first text and
    # to the end match the chat stream's, so their TTFTs compare.
    timed, _ = responses_stream("m", CHUNKS)
    chat, _, _ = stream_events("m", CHUNKS)
    assert len(timed) == len(chat) == CHUNKS
    assert b"event: response.output_text.delta" not in timed[0]
    assert all(t.count(b"event: response.output_text.delta") == 1 for t in timed[1:])


def test_sse_mock_answers_a_non_streaming_responses_request(sse: openai.OpenAI) -> None:
    r = sse.responses.create(model="bench-responses", input="Hello")
    assert r.status == "completed" and r.output_text == responses_wire.TEXT
    Response.model_validate_json(responses_wire.STATIC)


def test_sse_mock_still_streams_chat(sse: openai.OpenAI) -> None:
    chunks = list(sse.chat.completions.create(
        model="bench-stream", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "".join(f" tok{i}" for i in range(1, CHUNKS))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == CHUNKS


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    exe = shutil.which("nginx")
    if exe is None:
        pytest.skip("nginx is not installed (bench/overhead/setup.sh installs it)")
    workdir: Path = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = mock_nginx.write_conf(workdir, port)
    proc = subprocess.Popen(mock_nginx.argv(exe, conf, workdir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.post(base + "/responses", content=b"{}", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (workdir / "nginx-error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not answer within 10 s"
                time.sleep(0.05)
        with openai.OpenAI(base_url=base, api_key="sk-bench", max_retries=0) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_serves_a_static_response_object(nginx: openai.OpenAI) -> None:
    r = nginx.responses.with_raw_response.create(model="bench-responses", input="Hello")
    assert r.http_response.content == responses_wire.STATIC
    RESPONSES.check_reply(r.http_response.content)
    resp = Response.model_validate_json(r.http_response.content)  # validated, not constructed
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.output_text == responses_wire.TEXT
    assert resp.usage is not None and resp.usage.total_tokens == 21
    assert resp.usage.input_tokens_details.cached_tokens == 0


def test_nginx_still_serves_the_chat_completion_elsewhere(nginx: openai.OpenAI) -> None:
    r = nginx.chat.completions.with_raw_response.create(
        model="bench-model", messages=[{"role": "user", "content": "Hello"}])
    CHAT.check_reply(r.http_response.content)
    assert r.parse().object == "chat.completion"
