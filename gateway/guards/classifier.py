"""The model-based check: a classifier called through the gateway's own routing.

The classifier is a public model of the policy (`guards.NAME.detector.model`), so it gets the
router's strategy, health and fallbacks like any request — a Llama Guard–style chat model on a
self-hosted deployment, or OpenAI's `/v1/moderations` on an external one. It is not a second
request of its own: each call it makes is an attempt of the request it checks (outcome
`guard`), so its tokens are priced and billed to that request's tenant in the same ledger
record, its worst case was reserved with that request at admission (`admission.py`), and
`timeout_s` bounds all of it. It checks prompts, whole replies and stream segments alike.

Llama Guard answers `safe`, or `unsafe` with a line of categories (`S1,S10`):
https://huggingface.co/meta-llama/Llama-Guard-3-8B#response-format. Moderations answer
`results[0].flagged` and `categories` (https://platform.openai.com/docs/api-reference/moderations).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.accounting.estimate import estimate_prompt_tokens
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.call import Call, Endpoint
from gateway.errors import GatewayError
from gateway.upstream import UpstreamFailure

if TYPE_CHECKING:
    from gateway.policy.guards import ModelDetector
    from gateway.providers.base import Target
    from gateway.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Classification:
    # True: unsafe (in a category the guard blocks); False: safe; None: no answer (`error`).
    unsafe: bool | None
    categories: tuple[str, ...] = ()
    error: str | None = None


# What one classifier call may cost beyond the text it checks, for admission's worst case:
# the chat template's message overhead, and the verdict (`safe` / `unsafe\nS1,S10`, capped by
# the call's `max_tokens`). Moderations generate nothing.
CALL_OVERHEAD_TOKENS = 16
VERDICT_MAX_TOKENS = 32


def call_tokens(detector: ModelDetector, text_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens of one classifier call checking `text_tokens` of text, at
    most: what admission reserves for it."""
    completion = 0 if detector.api == "moderation" else VERDICT_MAX_TOKENS
    return text_tokens + CALL_OVERHEAD_TOKENS, completion


async def classify(rt: Runtime, detector: ModelDetector, text: str, record: RequestRecord,
                   into: list[AttemptRecord] | None = None) -> Classification:
    """Ask the classifier about `text`, within `detector.timeout_s`. Every attempt (outcome
    `guard`) is added to `into` (default: `record.attempts`), a timed-out one and one cut
    short by cancellation (the client left) included, so its tokens are billed and its
    reservation settled with the rest of the record."""
    sink = record.attempts if into is None else into
    call = _call(detector, text, record.request_id)
    pending: list[tuple[Target, float]] = []
    try:
        async with asyncio.timeout(detector.timeout_s):
            return await _route(rt, detector, call, sink, pending)
    except TimeoutError:
        for target, started in pending:  # the attempt cut off by the deadline
            _attempt(sink, target, None, _sent(call), started,
                     f"timeout: no verdict within {detector.timeout_s:g} s")
        return Classification(None, error="timeout")
    except asyncio.CancelledError:
        for target, started in pending:
            _attempt(sink, target, None, _sent(call), started, "cancelled: the request ended")
        raise


def _sent(call: Call) -> Usage:
    """An attempt cut off in flight: the upstream may well have read (and will bill) its
    prompt, so it is counted, estimated; it generated nothing the gateway saw."""
    return Usage(input_uncached=estimate_prompt_tokens(call.body), source="estimated")


def _call(d: ModelDetector, text: str, request_id: str) -> Call:
    body: dict[str, Any]
    if d.api == "moderation":
        body = {"model": d.model, "input": text}
    else:
        body = {"model": d.model, "messages": [{"role": "user", "content": text}],
                "temperature": 0, "max_tokens": VERDICT_MAX_TOKENS}
    endpoint: Endpoint = "moderations" if d.api == "moderation" else "chat"
    return Call(endpoint=endpoint, model=d.model, body=body,
                raw=json.dumps(body, separators=(",", ":")).encode(), stream=False,
                request_id=request_id)


async def _route(rt: Runtime, d: ModelDetector, call: Call, sink: list[AttemptRecord],
                 pending: list[tuple[Target, float]]) -> Classification:
    try:
        plan = rt.router.plan(call)
    except GatewayError as e:
        return Classification(None, error=e.code or "unavailable")
    last = "no deployment"
    for target in plan.attempts[: plan.max_attempts]:
        adapter = rt.adapters[target.provider_name]
        if call.endpoint not in adapter.endpoints:
            last = f"{target.id} cannot serve /v1/{call.endpoint}"
            continue
        provider = rt.policy.providers[target.provider_name]
        started = time.monotonic()
        pending[:] = [(target, started)]
        try:
            req = adapter.build_request(call, target, False)
            resp = await rt.clients[target.provider_name].send(
                req, target.deployment.timeouts or provider.timeouts)
            try:
                body = await resp.read()
            except BaseException:  # the deadline (a cancellation) or a failed read
                resp.close()
                raise
            resp.release()
        except (UpstreamFailure, GatewayError) as e:
            pending.clear()
            last = f"{type(e).__name__}: {e}"
            _attempt(sink, target, None, None, started, last)
            continue
        pending.clear()
        if resp.status >= 400:
            why = adapter.classify(resp.status, body, resp.headers).message
            last = f"HTTP {resp.status}: {why}"
            _attempt(sink, target, resp.status, None, started, last)
            continue
        reply = adapter.parse_reply(call, target, body, False)
        verdict = _verdict(d, reply.body)
        _attempt(sink, target, 200, reply.usage, started, verdict.error)
        rt.health.success(target.id)
        return verdict
    return Classification(None, error=last)


def _attempt(sink: list[AttemptRecord], target: Target, status: int | None, usage: Any,
             started: float, error: str | None) -> None:
    sink.append(AttemptRecord(
        target.id, target.provider_name, target.upstream_model, "guard", status, usage,
        (time.monotonic() - started) * 1000, error=error))


def _verdict(d: ModelDetector, body: bytes) -> Classification:
    try:
        obj = json.loads(body)
        if d.api == "moderation":
            result = obj["results"][0]
            cats = tuple(sorted(k for k, v in (result.get("categories") or {}).items() if v))
            return _decide(bool(result.get("flagged")), cats, d.categories)
        text = str(obj["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Classification(None, error="unreadable classifier reply")
    return parse_llama_guard(text, d.categories)


def parse_llama_guard(text: str, blocked: Sequence[str] = ()) -> Classification:
    """`safe` / `unsafe\\nS1,S10` (leading whitespace and case tolerated)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return Classification(None, error="empty classifier reply")
    head = lines[0].lower()
    if head == "safe":
        return Classification(False)
    if head != "unsafe":
        return Classification(None, error="classifier reply is neither safe nor unsafe")
    cats = tuple(c.strip().upper() for c in (lines[1] if len(lines) > 1 else "").split(",")
                 if c.strip())
    return _decide(True, cats, blocked)


def _decide(flagged: bool, cats: tuple[str, ...], blocked: Sequence[str]) -> Classification:
    if not flagged:
        return Classification(False, cats)
    if blocked and not {c.lower() for c in cats} & {b.lower() for b in blocked}:
        return Classification(False, cats)  # unsafe, but in no category this guard blocks
    return Classification(True, cats)
