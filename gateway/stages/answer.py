"""Reply with a stage's `Answer` (a cache hit) in the shape the client asked for, and close
the request's record: one attempt with outcome `cache_hit`, the usage the answer would have
cost, zero upstream cost (pricing turns it into `saved_usd`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from gateway.accounting.records import AttemptRecord
from gateway.call import Call
from gateway.responses import RawResponse
from gateway.stages.base import Answer

if TYPE_CHECKING:
    from gateway.closing import Closer
    from gateway.limits.base import Reservation
    from gateway.observability.tracing import RequestSpan
    from gateway.stages.pipeline import RequestStages

_SSE = b"text/event-stream; charset=utf-8"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def completion(answer: Answer, call: Call) -> dict[str, Any]:
    """The stored completion as this request's reply: its own id, time and public model."""
    body = dict(answer.body)
    body["id"] = f"chatcmpl-{call.request_id}"
    body["created"] = int(time.time())
    body["model"] = call.model
    if answer.usage is not None:
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


async def reply_with(stages: RequestStages, answer: Answer, closer: Closer,
                     reservation: Reservation | None, codec: Any, t0: float,
                     span: RequestSpan) -> RawResponse:
    ctx = stages.ctx
    call, record = ctx.call, ctx.record
    body = completion(answer, call)
    if call.stream:
        data = replay_chunks(body, call.client_include_usage)
        if codec is not None:
            shaped = codec.stream(call)
            data = shaped.feed(data) + shaped.finish()
    else:
        data = _dumps(body)
        if codec is not None:
            data = codec.reply(data, call)
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
