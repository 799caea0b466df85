"""Retry and fallback before the first byte; never after it. Cooldown and recovery."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy

MSG = [{"role": "user", "content": "hi"}]


def post(gw, model="chat", **kw):
    return httpx.post(gw.base_url + "/chat/completions",
                      json={"model": model, "messages": MSG, **kw}, timeout=30)


@pytest.fixture
def pair(fakes, gateway, tmp_path):
    a, b, big = fakes("a"), fakes("b"), fakes("big")
    gw = gateway(simple_policy(tmp_path, {
        "a": provider(a, timeouts={"connect": 1, "first_byte": 0.5, "total": 5}),
        "b": provider(b), "big": provider(big)}, {
        "chat": {"deployments": [{"provider": "a", "model": "m"},
                                 {"provider": "b", "model": "m", "weight": 0.000001}],
                 "fallbacks": ["backup"], "context_fallbacks": ["long"]},
        "backup": {"deployments": [{"provider": "b", "model": "backup-m"}]},
        "long": {"deployments": [{"provider": "big", "model": "long-m"}]},
    }, router={"max_attempts": 3}))
    return a, b, big, gw


def test_5xx_falls_back_to_next_deployment_with_headers(pair) -> None:
    a, _b, _, gw = pair
    a.fail_next(1, status=503)
    r = post(gw)
    assert r.status_code == 200
    assert r.headers["x-gateway-deployment"] == "b/m"
    assert r.headers["x-gateway-attempts"] == "2"
    assert r.json()["model"] == "chat"


@pytest.mark.parametrize("fault", ["429", "timeout", "reset", "refused"])
def test_retryable_failures_fall_back(pair, fault) -> None:
    a, _b, _, gw = pair
    if fault == "429":
        a.fail_next(1, status=429, headers={"Retry-After": "1"})
    elif fault == "timeout":
        a.hang_next(1)
    elif fault == "reset":
        a.drop_stream_after(0)
    else:
        a.stop()
    r = post(gw, stream=fault == "reset")
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-deployment"] == "b/m"


def test_client_errors_are_returned_not_retried(pair) -> None:
    a, b, _, gw = pair
    for status in (400, 404, 422):
        a.fail_next(1, status=status, body={"error": {"message": f"bad {status}",
                                                      "type": "invalid_request_error",
                                                      "param": None, "code": None}})
        n_b = len(b.requests)
        r = post(gw)
        assert r.status_code == status
        assert r.json()["error"]["message"] == f"bad {status}"
        assert len(b.requests) == n_b


def test_context_length_goes_only_to_context_fallbacks(pair) -> None:
    a, b, _big, gw = pair
    a.fail_next(1, status=400, body={"error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
    n_b = len(b.requests)
    r = post(gw)
    assert r.status_code == 200
    assert r.headers["x-gateway-deployment"] == "big/long-m"
    assert len(b.requests) == n_b  # neither the sibling nor the ordinary fallback


def test_vllm_context_error_without_context_fallback_is_400(fakes, gateway, tmp_path) -> None:
    v = fakes("v", vllm=True, max_context=10)
    gw = gateway(simple_policy(tmp_path, {"v": provider(v, kind="vllm")},
                               {"chat": {"deployments": [{"provider": "v", "model": "m"}]}}))
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=MSG * 5)
    assert info.value.body["code"] == "context_length_exceeded"


def test_fallback_chain_then_one_clear_error(pair) -> None:
    a, b, _, gw = pair
    a.fail_next(1, status=500)
    b.fail_next(2, status=502)
    r = post(gw)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "all_deployments_failed"
    for name in ("a/m", "b/m", "b/backup-m"):
        assert name in err["message"]


def test_retry_budget_caps_attempts(fakes, gateway, tmp_path) -> None:
    fs = [fakes(f"f{i}") for i in range(5)]
    gw = gateway(simple_policy(tmp_path, {f.name: provider(f) for f in fs}, {
        "chat": {"deployments": [{"provider": f.name, "model": "m"} for f in fs],
                 "max_attempts": 2}}))
    for f in fs:
        f.fail_next(1, status=503)
    r = post(gw)
    assert r.status_code == 502
    assert sum(len(f.requests) for f in fs) == 2


def test_cooldown_skips_then_probe_recovers(pair) -> None:
    a, _b, _, gw = pair
    a.fail_next(2, status=500)  # circuit_breaker.failures = 2 in simple_policy
    post(gw)
    post(gw)
    n_a = len(a.requests)
    for _ in range(5):
        assert post(gw).headers["x-gateway-deployment"] == "b/m"
    assert len(a.requests) == n_a  # skipped while cooling
    ready = httpx.get(gw.url + "/ready").json()
    assert ready["deployments"]["a/m"] == "cooldown"
    # After cooldown_s (1 s) one probe goes through, succeeds, and the breaker closes.
    assert wait_until(lambda: post(gw).headers["x-gateway-deployment"] == "a/m", timeout=5)
    assert post(gw).headers["x-gateway-deployment"] == "a/m"


def test_retry_after_is_honoured_as_cooldown(pair) -> None:
    a, _b, _, gw = pair
    a.fail_next(1, status=429, headers={"Retry-After": "2"})
    post(gw)
    t = time.monotonic()
    n_a = len(a.requests)
    while time.monotonic() - t < 1.0:
        post(gw)
    assert len(a.requests) == n_a


def test_mid_stream_failure_is_not_retried_and_ends_with_error_event(pair) -> None:
    a, b, _, gw = pair
    a.chunk_delay = 0.05  # the first chunk reaches the client before the failure
    a.drop_stream_after(3)
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for c in client.chat.completions.create(model="chat", messages=MSG, stream=True):
            seen.append(c)
    assert seen  # bytes had reached the client, so no fallback
    assert "mid-stream" in str(info.value) or "before it was complete" in str(info.value)
    assert len(b.requests) == 0


def test_upstream_error_event_mid_stream(pair) -> None:
    a, _, _, gw = pair
    a.chunk_delay = 0.05
    a.error_event_after(2)
    with httpx.stream("POST", gw.base_url + "/chat/completions",
                      json={"model": "chat", "messages": MSG, "stream": True}) as r:
        body = b"".join(r.iter_bytes())
    events = [e for e in body.split(b"\n\n") if e]
    assert b'"error"' in events[-1] and b"injected mid-stream error" in events[-1]
