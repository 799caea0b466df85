"""The Responses ingress (`POST /v1/responses`): its codec, plus the conversation around it.

The proxy treats it like the Anthropic ingress — a codec that turns the internal (chat-shaped)
reply or stream into the client's API — with two steps only this ingress has:
- `prepare`, after authentication and before admission: `previous_response_id` is looked up in
  the tenant's stored responses and the conversation rebuilt — as chat messages for a backend
  reached by translation, and as `call.conversation` for a backend that speaks Responses
  natively (it gets the upstream's own previous id when it served that turn, the history
  otherwise, e.g. after a fallback). It returns that lookup for the proxy to await, and
  None for a request that continues nothing: no I/O, so nothing to await;
- `completed`, a plain call, before the response's last byte: the response is handed to the
  store, where a follow-up on this replica finds it at once; the store writes it to the
  ledger's database (per tenant) in its next batch, right after, off the request's path. A
  follow-up that reaches another replica before that batch commits is looked up once more
  after `_RECHECK_S` (docs/responses.md, "Stored responses").
Stored content is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from pydantic_core import to_json

from gateway.accounting.estimate import json_chars as _chars
from gateway.api.responses_codec import ResponsesCodec
from gateway.api.responses_request import (
    input_items,
    to_chat_request,
    untranslatable,
)
from gateway.call import Call, Conversation, Principal
from gateway.conversation import ResponseStore, StoredResponse, StoreUnavailable
from gateway.errors import GatewayError, InvalidRequest, ServiceUnavailable
from gateway.policy.models import Policy
from gateway.providers.base import Target

log = logging.getLogger("gateway.responses")

_DAY = 86_400
# A `previous_response_id` not found is looked up once more after this long: another replica
# (or `--workers` process) may have answered it a moment ago, its batch not yet committed.
_RECHECK_S = 0.25


class ResponsesIngress:
    def __init__(self, store: ResponseStore, policy: Callable[[], Policy],
                 codec: ResponsesCodec | None = None) -> None:
        self.store = store
        self._policy = policy
        self.codec = codec or ResponsesCodec()

    # ---- the codec, as the proxy and StreamResponse use it ------------------------------------

    def reply(self, chat_body: bytes, call: Call) -> bytes:
        return self.codec.reply(chat_body, call)

    def stream(self, call: Call) -> Any:
        return self.codec.stream(call)

    def error_body(self, exc: GatewayError) -> bytes:
        return self.codec.error_body(exc)

    def error_event(self, exc: GatewayError) -> bytes:
        return self.codec.error_event(exc)

    # ---- the conversation -------------------------------------------------------------------

    def prepare(self, call: Call, principal: Principal) -> Coroutine[Any, Any, None] | None:
        """Fill in the chat translation's seams (`call.translate`, the estimate). A request that
        continues a stored conversation (`previous_response_id`) returns the store lookup that
        rebuilds it, for the proxy to await; any other returns None: nothing to look up, so
        the request pays no coroutine for it (issue 10: native costs no more than chat)."""
        body = call.native_body or {}
        prev = body.get("previous_response_id")
        if isinstance(prev, str) and prev:
            return self._continue(call, body, principal.tenant, prev)
        _translatable(call, body, [])
        return None

    async def _continue(self, call: Call, body: dict[str, Any], tenant: str,
                        prev: str) -> None:
        chain = await self._chain(tenant, prev)
        if chain is None:
            raise InvalidRequest(f"Previous response with id '{prev}' not found.",
                                 param="previous_response_id",
                                 code="previous_response_not_found")
        history: list[dict[str, Any]] = []
        for r in chain:
            history += r.input_items
            history += r.output
        last = chain[-1]
        upstream = {last.provider: last.upstream_id} if last.provider and last.upstream_id \
            else {}
        call.conversation = Conversation(history, prev, upstream)
        _translatable(call, body, history)

    async def _chain(self, tenant: str, prev: str) -> list[StoredResponse] | None:
        turns = self._policy().responses.max_turns
        try:
            chain = await self.store.chain(tenant, prev, turns)
            if chain is None:
                await asyncio.sleep(_RECHECK_S)
                chain = await self.store.chain(tenant, prev, turns)
            return chain
        except StoreUnavailable as e:
            log.warning("responses: the store cannot be read (%s); a follow-up turn failed", e)
            raise ServiceUnavailable("Stored responses cannot be read right now, so "
                                     "previous_response_id cannot be resolved; retry shortly.",
                                     headers={"Retry-After": "5"}) from None

    def stores(self, call: Call) -> bool:
        return self._policy().responses.store and (call.native_body or {}).get("store") \
            is not False

    def completed(self, call: Call, target: Target, tenant: str) -> None:
        """Store the response the client is about to receive in full (without waiting for
        the database: `ResponseStore.put_later`, so nothing to await). A store that is down
        costs the follow-up turn, never this answer: logged, not raised."""
        final = call.final_response
        if final is None or call.response_id is None or not self.stores(call):
            return
        body = call.native_body or {}
        now = int(time.time())
        prev = body.get("previous_response_id")
        stored = StoredResponse(
            id=call.response_id, tenant=tenant, model=call.model,
            created_at=int(final.get("created_at") or now), status=str(final.get("status")),
            previous_response_id=prev if isinstance(prev, str) else None,
            input_items=input_items(body), output=list(final.get("output") or []),
            response=final, provider=target.provider_name,
            upstream_id=call.upstream_response_id,
            expires_at=now + self._policy().responses.retention_days * _DAY)
        try:
            self.store.put_later(stored)
        except StoreUnavailable as e:
            log.warning("responses: could not store %s (%s); a follow-up naming it will not "
                        "find it", call.response_id, e)


def _translatable(call: Call, body: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """What a backend reached by translation needs, left for it to build (`call.translate`)."""
    call.translation_error = untranslatable(body)
    # Until a backend reached by translation needs the chat request, admission reads
    # bytes / 4 (an overestimate: JSON's syntax counts) and the output cap: a native
    # backend never needs the translation.
    call.prompt_estimate = (len(call.native_raw or b"") + (_chars(history) if history
                                                           else 0)) // 4
    cap = body.get("max_output_tokens")
    call.body = {"max_completion_tokens": cap} if isinstance(cap, int) else {}
    if call.translation_error is None:
        # A partial, not a closure: built on every request, called on few. It is given the
        # call when called (`Call.translate`), so it does not hold it: no reference cycle.
        call.translate = partial(_translate, body, history)


def _translate(body: dict[str, Any], history: list[dict[str, Any]], call: Call) -> None:
    """`call.body`/`raw` as the chat request, the first time a translated backend needs it."""
    call.body = to_chat_request(body, history)
    call.raw = to_json(call.body)
    call.translate = None
