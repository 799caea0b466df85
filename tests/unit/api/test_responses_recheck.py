"""A `previous_response_id` not found is looked up once more before the 400: another replica
may have answered it a moment ago, its batch not yet in the database (docs/responses.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api import responses_ingress
from gateway.api.responses_ingress import ResponsesIngress
from gateway.call import Call, Principal
from gateway.conversation import StoredResponse
from gateway.errors import InvalidRequest
from gateway.policy.models import Policy

POLICY = Policy.model_validate({"version": 1, "providers": {}, "models": {}})
PREV = StoredResponse(id="resp_prev", tenant="acme", model="m", created_at=1, status="completed",
                      previous_response_id=None, input_items=[{"role": "user", "content": "hi"}],
                      output=[], response={})


class LateStore:
    """Finds the response only from the `found_on`-th look-up on."""

    def __init__(self, found_on: int) -> None:
        self.found_on = found_on
        self.lookups = 0

    async def chain(self, tenant: str, id: str, max_turns: int) -> list[StoredResponse] | None:
        self.lookups += 1
        return [PREV] if self.lookups >= self.found_on else None


def call() -> Call:
    body: dict[str, Any] = {"model": "m", "input": "again", "previous_response_id": "resp_prev"}
    return Call("chat", "m", {}, b"", False, "rid", ingress="responses", native_body=body,
                native_raw=b"{}", response_id="resp_new")


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses_ingress, "_RECHECK_S", 0.01)


def test_a_response_committed_a_moment_later_is_found() -> None:
    store = LateStore(found_on=2)
    c = call()
    asyncio.run(ResponsesIngress(store, lambda: POLICY).prepare(  # type: ignore[arg-type]
        c, Principal("acme", "k")))
    assert store.lookups == 2
    assert c.conversation is not None and c.conversation.items == PREV.input_items


def test_one_still_missing_after_the_recheck_is_a_400() -> None:
    store = LateStore(found_on=3)
    with pytest.raises(InvalidRequest) as e:
        asyncio.run(ResponsesIngress(store, lambda: POLICY).prepare(  # type: ignore[arg-type]
            call(), Principal("acme", "k")))
    assert e.value.code == "previous_response_not_found" and store.lookups == 2
