"""Streams pass through unbuffered; a client that leaves cancels the upstream."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def slow(fakes, gateway, tmp_path):
    up = fakes("slow", words=40)
    up.chunk_delay = 0.05
    gw = gateway(simple_policy(tmp_path, {"slow": provider(up)},
                               {"chat": {"deployments": [{"provider": "slow", "model": "m"}]}}))
    return up, gw


def test_first_chunk_arrives_before_upstream_finishes(slow) -> None:
    up, gw = slow
    with httpx.stream("POST", gw.base_url + "/chat/completions",
                      json={"model": "chat", "messages": MSG, "stream": True}) as r:
        it = r.iter_raw()
        first = next(it)
        # No buffering: the upstream is still generating when the client holds its first chunk.
        assert first.startswith(b"data: ")
        assert up.completed_streams == 0
        rest = b"".join(it)
    assert rest.endswith(b"data: [DONE]\n\n")
    assert wait_until(lambda: up.completed_streams == 1)
    assert up.client_gone == 0


def test_client_disconnect_cancels_upstream(slow) -> None:
    up, gw = slow
    with httpx.stream("POST", gw.base_url + "/chat/completions",
                      json={"model": "chat", "messages": MSG, "stream": True}) as r:
        next(r.iter_raw())
    # The client closed after one chunk: the gateway must drop the upstream request too.
    assert wait_until(lambda: up.client_gone == 1, timeout=5)
    assert up.completed_streams == 0
    assert wait_until(lambda: up.in_flight == 0, timeout=5)


def test_stalled_stream_ends_with_error_event(fakes, gateway, tmp_path) -> None:
    up = fakes("stall", words=5)
    gw = gateway(simple_policy(tmp_path, {"stall": provider(
        up, timeouts={"connect": 1, "first_byte": 0.5, "total": 3})},
        {"chat": {"deployments": [{"provider": "stall", "model": "m"}]}}))
    up.stall_stream_after(2, seconds=10)
    with httpx.stream("POST", gw.base_url + "/chat/completions",
                      json={"model": "chat", "messages": MSG, "stream": True}, timeout=20) as r:
        body = b"".join(r.iter_bytes())
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b"data: {")
    assert b'"error"' in events[-1]
