"""SIGTERM's drain: a stream still running at the deadline ends with an error event in the
ingress's shape (never a silent truncation), and its record says the shutdown cut it
(issue 8, item 7)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.base import wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import GatewayProcess
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import record


def _record(tmp: Path, client_id: str) -> Any:
    return record(tmp, client_id=client_id)


@pytest.fixture
def slow_gateway(tmp_path: Path) -> Any:
    with FakeOpenAI("up", words=200) as up:
        up.chunk_delay = 0.05  # a 10 s stream
        gw = GatewayProcess(simple_policy(
            tmp_path, {"up": provider(up)},
            {"chat": {"deployments": [{"provider": "up", "model": "m"}]}}),
            tmp=tmp_path, args=("--graceful-timeout", "2")).start()
        yield gw, up
        gw.stop()


def _terminate_after_first_content(gw: GatewayProcess, chunks: Any) -> list[str]:
    got: list[str] = []
    for text in chunks:
        got.append(text)
        if len(got) == 1:
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
    return got


def test_a_stream_cut_by_shutdown_ends_with_an_error_event(slow_gateway: Any,
                                                           tmp_path: Path) -> None:
    gw, _up = slow_gateway
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-request-id": "cut-openai"})
    with pytest.raises(openai.APIError) as e:
        _terminate_after_first_content(
            gw, (c.choices[0].delta.content or "" for c in stream if c.choices))
    assert "shutting down" in str(e.value)
    assert gw.proc is not None and gw.proc.wait(15) in (0, -signal.SIGTERM)
    rec = _record(tmp_path, "cut-openai")
    assert rec.status == 200 and rec.error_code == "gateway_shutdown"
    assert [a.outcome for a in rec.attempts] == ["cancelled"]


def test_an_anthropic_stream_gets_anthropics_error_event(slow_gateway: Any,
                                                          tmp_path: Path) -> None:
    gw, _up = slow_gateway
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=30)
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="chat", max_tokens=500,
                                    messages=[{"role": "user", "content": "hi"}],
                                    extra_headers={"x-request-id": "cut-anthropic"}) as s:
            _terminate_after_first_content(gw, s.text_stream)
    assert "shutting down" in str(e.value)
    assert gw.proc is not None and gw.proc.wait(15) in (0, -signal.SIGTERM)
    assert _record(tmp_path, "cut-anthropic").error_code == "gateway_shutdown"


def test_a_request_still_waiting_at_the_deadline_gets_a_503(slow_gateway: Any,
                                                            tmp_path: Path) -> None:
    gw, up = slow_gateway
    up.delay_next(1, seconds=20)
    result: dict[str, Any] = {}

    def call() -> None:
        result["r"] = httpx.post(gw.base_url + "/chat/completions", timeout=30,
                                 headers={"x-request-id": "cut-waiting"},
                                 json={"model": "chat",
                                       "messages": [{"role": "user", "content": "hi"}]})

    t = threading.Thread(target=call)
    t.start()
    assert wait_until(lambda: up.in_flight >= 1, timeout=10)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    t.join(20)
    r = result["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "gateway_shutdown"
    assert gw.proc.wait(15) in (0, -signal.SIGTERM)
    rec = _record(tmp_path, "cut-waiting")
    assert rec.status == 503 and rec.error_code == "gateway_shutdown"
