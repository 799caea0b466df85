"""Errors the gateway itself produces: OpenAI's shape, the right status, a way out."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from tests.integration.conftest import provider, simple_policy


@pytest.fixture
def gw(fakes, gateway, tmp_path):
    up = fakes("up", api_key="sk-upstream-SECRET-123456")
    return gateway(simple_policy(
        tmp_path, {"up": provider(up, api_key="sk-upstream-SECRET-123456")},
        {"chat": {"deployments": [{"provider": "up", "model": "m"}]},
         "other": {"deployments": [{"provider": "up", "model": "m2"}]}},
        server={"max_body_bytes": 2048}))


def _err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json_is_400(gw) -> None:
    r = httpx.post(gw.base_url + "/chat/completions", content=b"{nope",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in _err(r)["message"]


def test_missing_model_is_400(gw) -> None:
    r = httpx.post(gw.base_url + "/chat/completions", json={"messages": []})
    assert r.status_code == 400
    e = _err(r)
    assert e["param"] == "model" and "model parameter" in e["message"]


def test_unknown_model_is_404_listing_available(gw) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key="k")
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    e = info.value.body
    assert e["code"] == "model_not_found"
    assert "Available: chat, other." in e["message"]


def test_oversized_body_is_413(gw) -> None:
    big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(gw.base_url + "/chat/completions", json=big)
    assert r.status_code == 413
    assert "server.max_body_bytes" in _err(r)["message"]

    def chunked():
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    r = httpx.post(gw.base_url + "/chat/completions", content=chunked())
    assert r.status_code == 413


def test_unknown_path_and_method(gw) -> None:
    r = httpx.get(gw.url + "/v2/whatever")
    assert r.status_code == 404 and _err(r)["code"] == "unknown_url"
    r = httpx.get(gw.base_url + "/chat/completions")
    assert r.status_code == 405


def test_upstream_key_never_leaks(gw, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ok = httpx.post(gw.base_url + "/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "x"}]})
    missing = httpx.post(gw.base_url + "/chat/completions",
                         json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert ok.status_code == 200 and missing.status_code == 404
    for r in (ok, missing):
        assert "SECRET" not in r.text and "SECRET" not in str(r.headers)
    assert all("SECRET" not in rec.getMessage() for rec in caplog.records)


def test_upstream_error_message_is_scrubbed(fakes, gateway, tmp_path) -> None:
    key = "sk-live-abcdefghijklmnop"
    up = fakes("up")
    gw = gateway(simple_policy(tmp_path, {"up": provider(up, api_key=key)},
                               {"chat": {"deployments": [{"provider": "up", "model": "m"}]}}))
    up.fail_next(1, status=400, body={"error": {
        "message": f"Bad request; your key {key} at {up.url}/v1 is fine",
        "type": "invalid_request_error",
        "param": "messages", "code": "bad"}})
    r = httpx.post(gw.base_url + "/chat/completions",
                   json={"model": "chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    e = _err(r)
    assert key not in r.text and up.url not in r.text
    assert e["param"] == "messages" and e["code"] == "bad"
    assert "Bad request" in e["message"]
