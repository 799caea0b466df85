"""Reply with a stage's `Answer` (a cache hit) in the shape the client asked for, and close
the request's record: one attempt with outcome `cache_hit`, the usage the answer would have
cost, zero upstream cost (pricing turns it into `saved_usd`).

A chat-shaped answer goes through the ingress codec (JSON, or a chat SSE replay the codec
reshapes); a native one (`Answer.wire` is the ingress's) is replayed in its own shape
(`cache_replay.py`). Then the ingress's `completed` runs as after an upstream reply: the
Responses ingress stores the replayed response under this request's fresh id (unless
`store: false`), so a follow-up's `previous_response_id` finds it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.accounting.records import AttemptRecord
from gateway.call import Call
from gateway.policy.models import Deployment
from gateway.providers.base import Target
from gateway.providers.request_json import encode
from gateway.responses import RawResponse
from gateway.stages.base import Answer, StageContext
from gateway.stages.cache_replay import (
    anthropic_events,
    anthropic_message,
    response_events,
    response_object,
)

if TYPE_CHECKING:
    from gateway.closing import Closer
    from gateway.limits.base import Reservation
    from gateway.observability.tracing import RequestSpan
    from gateway.stages.pipeline import RequestStages

_SSE = b"text/event-stream; charset=utf-8"


def _dumps(obj: Any) -> bytes:
    return encode(obj)


def completion(answer: Answer, call: Call) -> dict[str, Any]:
    """The stored completion as this request's reply: its own id, time and public model."""
    body = dict(answer.body)
    body["id"] = f"chatcmpl-{call.request_id}"
    body["created"] = int(time.time())
    body["model"] = call.model
    if answer.usage is not None and "usage" not in body:  # a decoded entry has it already
        body["usage"] = answer.usage.to_openai()
    return body


def replay_chunks(body: dict[str, Any], include_usage: bool) -> bytes:
    """The completion as the SSE stream an upstream would have sent: a role chunk, the content
    (and tool calls), the finish chunk, the usage chunk when asked, `[DONE]`."""
    head: dict[str, Any] = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")
                            if k in body}
    head["object"] = "chat.completion.chunk"
    choice = body["choices"][0]
    message = choice.get("message") or {}
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: Any = None) -> bytes:
        obj = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}], **extra}
        return b"data: " + _dumps(obj) + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    if message.get("content"):
        out.append(chunk({"content": message["content"]}))
    if message.get("refusal"):
        out.append(chunk({"refusal": message["refusal"]}))
    for i, tc in enumerate(message.get("tool_calls") or ()):
        out.append(chunk({"tool_calls": [{"index": i, **tc}]}))
    out.append(chunk({}, choice.get("finish_reason")))
    if include_usage and body.get("usage") is not None:
        out.append(b"data: " + _dumps({**head, "choices": [], "usage": body["usage"]}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def replayed(answer: Answer, call: Call, codec: Any) -> bytes:
    """The client's bytes: JSON or SSE, in the ingress's shape."""
    if answer.wire == "anthropic":
        msg = anthropic_message(answer.body, call)
        return anthropic_events(msg) if call.stream else encode(msg)
    if answer.wire == "responses":
        obj = response_object(answer.body, call)
        return response_events(obj) if call.stream else encode(obj)
    body = completion(answer, call)
    if call.stream:
        data = replay_chunks(body, call.client_include_usage)
        if codec is not None:
            shaped = codec.stream(call)
            data = shaped.feed(data) + shaped.finish()
        return data
    data = _dumps(body)
    return codec.reply(data, call) if codec is not None else data


def _target(ctx: StageContext, answer: Answer) -> Target:
    """The deployment whose reply this was, for the ingress's `completed` (the Responses store
    names its provider; no upstream id: a follow-up sends the conversation itself)."""
    for d in ctx.route.deployments:
        if d.id == answer.deployment:
            return Target(ctx.call.model, d, answer.provider)
    return Target(ctx.call.model, Deployment(provider=answer.provider,
                                             model=answer.upstream_model), answer.provider)


async def reply_with(stages: RequestStages, answer: Answer, closer: Closer,
                     reservation: Reservation | None, codec: Any, t0: float,
                     span: RequestSpan) -> RawResponse:
    ctx = stages.ctx
    call, record = ctx.call, ctx.record
    data = replayed(answer, call, codec)
    if codec is not None:
        stages.mark()  # the ingress may store the reply (I/O): journal the admission first
        codec.completed(call, _target(ctx, answer), record.tenant)
    elapsed = time.monotonic() - t0
    record.attempts.append(AttemptRecord(
        answer.deployment, "cache", answer.upstream_model, answer.outcome, 200,
        answer.usage, elapsed * 1000))
    record.status = 200
    record.error_code = None
    record.latency_ms = elapsed * 1000
    if call.stream:
        record.ttft_ms = elapsed * 1000
    await closer.close(reservation, record, span)
    closer.deps.metrics.request_done(call.model, 200, elapsed, elapsed if call.stream else None)
    headers = {"x-request-id": call.client_request_id or call.request_id,
               "x-gateway-request-id": call.request_id, "x-gateway-attempts": "0"}
    if reservation is not None:
        headers.update(reservation.headers)
    headers.update(stages.headers)
    return RawResponse(200, data, headers, content_type=_SSE if call.stream else
                       b"application/json")
