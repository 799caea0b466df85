"""`ResponsesIngress.prepare` costs a native pass-through nothing it does not need (issue 10):
no coroutine when there is no conversation to look up, and no reference cycle — a call left
for the garbage collector keeps the request's whole object graph alive until a collection
runs, which the native path paid for on every request."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.api.responses_ingress import ResponsesIngress
from gateway.call import Call, Principal
from gateway.conversation import StoredResponse
from gateway.policy.models import Policy

POLICY = Policy.model_validate({"version": 1, "providers": {}, "models": {}})
PREV = StoredResponse(id="resp_prev", tenant="acme", model="m", created_at=1, status="completed",
                      previous_response_id=None, input_items=[{"role": "user", "content": "hi"}],
                      output=[], response={})
WHO = Principal("acme", "k")


class Store:
    async def chain(self, tenant: str, id: str, max_turns: int) -> list[StoredResponse] | None:
        return [PREV] if id == PREV.id else None


def ingress() -> ResponsesIngress:
    return ResponsesIngress(Store(), lambda: POLICY)  # type: ignore[arg-type]


def call(**body: Any) -> Call:
    native: dict[str, Any] = {"model": "m", "input": "Hello", "max_output_tokens": 16, **body}
    return Call("chat", "m", {}, b"", False, "rid", ingress="responses", native_body=native,
                native_raw=b'{"model":"m","input":"Hello","max_output_tokens":16}',
                response_id="resp_rid")


@pytest.fixture
def saved_garbage() -> Iterator[None]:
    """Unreachable objects kept in `gc.garbage` instead of freed, so a test can look at them."""
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


def test_a_request_continuing_nothing_has_nothing_to_await() -> None:
    c = call(store=False)
    assert ingress().prepare(c, WHO) is None
    assert c.conversation is None and c.translate is not None
    assert c.body == {"max_completion_tokens": 16} and c.prompt_estimate == len(c.native_raw
                                                                                or b"") // 4
    c.translate(c)  # a backend reached by translation gets the chat request
    assert c.body["messages"] == [{"role": "user", "content": "Hello"}] and c.raw
    assert c.translate is None


def test_a_follow_up_returns_the_lookup_to_await() -> None:
    c = call(previous_response_id="resp_prev")
    pending = ingress().prepare(c, WHO)
    assert pending is not None and c.conversation is None  # nothing resolved before the await
    asyncio.run(pending)
    assert c.conversation is not None and c.conversation.items == PREV.input_items
    assert c.translate is not None


@pytest.mark.parametrize("body", [{"store": False}, {}, {"tools": [{"type": "web_search"}]}])
def test_a_prepared_call_is_freed_without_the_garbage_collector(saved_garbage: None,
                                                                body: dict[str, Any]) -> None:
    c = call(**body)
    assert ingress().prepare(c, WHO) is None
    del c
    gc.collect()
    assert not [o for o in gc.garbage if isinstance(o, Call)]


def test_a_translated_call_is_freed_too(saved_garbage: None) -> None:
    c = call()
    ingress().prepare(c, WHO)
    assert c.translate is not None
    c.translate(c)
    del c
    gc.collect()
    assert not [o for o in gc.garbage if isinstance(o, Call)]
