"""Which value pins a conversation to one deployment, per model (`models.*.session_key`).

The ingress sets `Call.session` to the first of the `x-session-id` header, the `user` field
and (Responses API) `previous_response_id`. A model may name one of them instead, another
request header (`{header: x-conversation-id}`: the ingress keeps every header a model of the
loaded policy names, `session_headers`), or none:
`prefix-affinity` hashes the session onto its ring, and `prefix-load` sends a session back to
where its last request went while that is not loaded. Resolved per model when the plan is
built, so a fallback model with another rule gets its own key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gateway.call import Call
from gateway.policy.models import Policy, SessionKey
from gateway.policy.spill import SessionHeader
from gateway.providers.base import Target
from gateway.routing.base import Signals, Strategy


def _body(call: Call) -> dict[str, Any]:
    """The client's own body: the Responses request itself, else the (OpenAI-shaped) body."""
    if call.ingress == "responses" and call.native_body is not None:
        return call.native_body
    return call.body


def session_of(rule: SessionKey, call: Call) -> str | None:
    """The conversation key `rule` picks from this call; None when it has none."""
    if rule == "auto":
        return call.session
    if rule == "none":
        return None
    if rule == "header":
        return call.headers.get("x-session-id") or None
    if isinstance(rule, SessionHeader):
        return call.headers.get(rule.header) or None
    if rule == "user":
        user = _body(call).get("user")
        return user if isinstance(user, str) and user else None
    # previous_response_id: the conversation this response continues (Responses API only).
    if call.conversation is not None:
        return call.conversation.previous_id
    prev = _body(call).get("previous_response_id") if call.ingress == "responses" else None
    return prev if isinstance(prev, str) and prev else None


def session_headers(policy: Policy) -> tuple[str, ...]:
    """The request headers the ingress must keep in `Call.headers` for routing: `x-session-id`
    and every header a model's `session_key` names (lower-case, each once)."""
    names = {"x-session-id": None}
    for route in policy.models.values():
        if isinstance(route.session_key, SessionHeader):
            names[route.session_key.header] = None
    return tuple(names)


def with_session(rule: SessionKey, call: Call) -> Call:
    """`call` as the model's strategy should see it: a copy when the rule changes the key."""
    if rule == "auto":
        return call
    key = session_of(rule, call)
    return call if key == call.session else dataclasses.replace(call, session=key)


class SessionKeyed:
    """A strategy that sees the model's own session key instead of the ingress's choice."""

    __slots__ = ("_inner", "_rule")

    def __init__(self, inner: Strategy, rule: SessionKey) -> None:
        self._inner = inner
        self._rule = rule

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        return self._inner.order(candidates, signals, with_session(self._rule, call))


def keyed(strategy: Strategy, rule: SessionKey) -> Strategy:
    """`strategy`, seeing `rule`'s session key; itself for `auto` (nothing to change)."""
    return strategy if rule == "auto" else SessionKeyed(strategy, rule)
