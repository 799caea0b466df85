"""An unexpected exception anywhere on the request path releases what admission reserved at
once and leaves exactly one ledger record (status 500 and the exception's class) — the class
of failures, injected at every stage in turn (issue 8, item 2)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.keys import generate_key, hash_key
from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import by_client_id

KEY = generate_key()
ADMIN = "adm-" + generate_key()


class Injected(RuntimeError):
    """The bug: raised by a wrapped method of a live gateway object."""


@pytest.fixture
def gw(fakes: Any, gateway: Any, tmp_path: Any) -> Any:
    up = fakes("up", words=8)
    up.chunk_delay = 0.01  # one event per read: "mid-stream" is after the first bytes
    return gateway(simple_policy(
        tmp_path, {"up": provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m",
                                   "pricing": [{"input": "1", "output": "2"}]}]}},
        server={"admin_key": ADMIN},
        tenants={"acme": {"keys": [{"id": "k1", "hash": hash_key(KEY)}],
                          "limits": {"concurrency": 1},
                          "budget": {"daily_usd": "1"}}}))


def _runtime(gw: Any) -> Any:
    return gw.app.state.deps.runtime()


def _raise(*_a: Any, **_k: Any) -> Any:
    raise Injected("injected bug")


class _BreaksMidway:
    """A stream translator that fails once the first bytes reached the client."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._emitted = False

    def feed(self, data: bytes) -> bytes:
        if self._emitted:
            raise Injected("injected bug mid-stream")
        out = bytes(self._inner.feed(data))
        self._emitted = bool(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _failing_translator(adapter: Any) -> Callable[..., Any]:
    real = adapter.stream

    def stream(*a: Any, **k: Any) -> Any:
        return _BreaksMidway(real(*a, **k))
    return stream


# Where the bug is: (name, patch(gw) -> undo, stream?, expected status in the ledger)
def _patch(obj: Any, attr: str, value: Any) -> Callable[[], None]:
    had = attr in vars(obj) if hasattr(obj, "__dict__") else False
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    return (lambda: setattr(obj, attr, old)) if had else (lambda: delattr(obj, attr))


STAGES: list[tuple[str, Callable[[Any], Callable[[], None]], bool, int]] = [
    ("plan", lambda gw: _patch(_runtime(gw).router, "plan", _raise), False, 500),
    ("estimate", lambda gw: _patch(_runtime(gw), "estimate", _raise), False, 500),
    ("build_request", lambda gw: _patch(_runtime(gw).adapters["up"], "build_request", _raise),
     False, 500),
    ("build_request-stream",
     lambda gw: _patch(_runtime(gw).adapters["up"], "build_request", _raise), True, 500),
    ("parse_reply", lambda gw: _patch(_runtime(gw).adapters["up"], "parse_reply", _raise),
     False, 500),
    ("stream-open", lambda gw: _patch(_runtime(gw).adapters["up"], "stream", _raise), True, 500),
    ("stream-midway", lambda gw: _patch(_runtime(gw).adapters["up"], "stream",
                                        _failing_translator(_runtime(gw).adapters["up"])),
     True, 200),
]


def _reserved(gw: Any) -> str:
    r = httpx.get(gw.url + "/admin/budgets/acme", headers={"authorization": f"Bearer {ADMIN}"})
    return str(r.json()["budget"][0]["reserved_usd"])


@pytest.fixture
def client(gw: Any) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.mark.parametrize(("name", "inject", "stream", "status"), STAGES,
                         ids=[s[0] for s in STAGES])
def test_an_unexpected_exception_releases_the_reservation_and_leaves_one_record(
        gw: Any, client: openai.OpenAI, tmp_path: Any, name: str,
        inject: Callable[[Any], Callable[[], None]], stream: bool, status: int) -> None:
    rid = f"bug-{name}-{uuid.uuid4().hex[:8]}"
    undo = inject(gw)
    try:
        with pytest.raises(openai.APIError) as e:
            out = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], stream=stream,
                max_tokens=50, extra_headers={"x-request-id": rid})
            if stream:
                for _ in out:
                    pass
        if status == 500:
            assert isinstance(e.value, openai.InternalServerError)
            assert "internal error" in str(e.value)
            assert rid in e.value.response.headers["x-request-id"]
    finally:
        undo()
    # Released at once: the tenant's only concurrency slot is free for the next request...
    ok = client.chat.completions.create(model="chat", max_tokens=5,
                                        messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content
    # ...its budget hold is gone, and the failed request has exactly one record.
    assert wait_until(lambda: _reserved(gw) == "0", timeout=5), _reserved(gw)
    assert wait_until(lambda: len(by_client_id(tmp_path, rid)) == 1, timeout=5)
    (rec,) = by_client_id(tmp_path, rid)
    assert rec.status == status and rec.error_code == "internal_error"
    assert rec.error_class == "Injected"
    assert rec.request_id != rid


def test_a_bug_in_the_messages_codec_is_a_clean_anthropic_error(gw: Any, tmp_path: Any) -> None:
    codec = gw.app.state.deps.codecs["anthropic"]
    undo = _patch(codec, "reply", _raise)
    rid = "bug-codec-" + uuid.uuid4().hex[:8]
    try:
        r = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": KEY, "x-request-id": rid},
                       content=json.dumps({"model": "chat", "max_tokens": 5, "messages": [
                           {"role": "user", "content": "hi"}]}))
    finally:
        undo()
    assert r.status_code == 500
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error"
    assert wait_until(lambda: len(by_client_id(tmp_path, rid)) == 1, timeout=5)
    assert by_client_id(tmp_path, rid)[0].error_class == "Injected"
