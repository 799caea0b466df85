"""A native cache entry replayed in its own API's shape: an Anthropic `message` or a Responses
`response` object, as JSON or as the SSE event sequence that API streams (the sequence the
official SDKs' stream helpers accumulate). Entries in the chat shape are replayed by
`answer.py` through the ingress codec instead.

A replay is this request's reply, not the stored one's: its own id, time and public model; a
Responses replay also echoes this request's settings that are not in the key (`store`, `user`,
`metadata`, `previous_response_id`).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.call import Call
from gateway.providers.request_json import encode

# Responses request fields the key leaves out that the Response object echoes.
_ECHOED = ("store", "user", "metadata")


def anthropic_message(stored: dict[str, Any], call: Call) -> dict[str, Any]:
    return {**stored, "id": "msg_" + call.request_id, "model": call.model}


def _sse(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encode(obj) + b"\n\n"


def anthropic_events(msg: dict[str, Any]) -> bytes:
    """message_start, each block as start/delta/stop, message_delta (stop reason, usage),
    message_stop — what the Messages API streams for this message."""
    usage = dict(msg.get("usage") or {})
    start_usage = {**usage, "output_tokens": min(1, int(usage.get("output_tokens") or 0))}
    head = {k: v for k, v in msg.items() if k not in ("content", "usage")}
    out = [_sse("message_start", {"type": "message_start", "message": {
        **head, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": start_usage}})]
    for i, block in enumerate(msg.get("content") or ()):
        kind = block.get("type")
        delta: dict[str, Any] | None = None
        extra: list[dict[str, Any]] = []
        if kind == "text":
            first = {**block, "text": ""}
            delta = {"type": "text_delta", "text": block.get("text", "")}
        elif kind == "tool_use":
            first = {**block, "input": {}}
            delta = {"type": "input_json_delta",
                     "partial_json": encode(block.get("input") or {}).decode()}
        elif kind == "thinking":
            first = {**block, "thinking": "", "signature": ""}
            delta = {"type": "thinking_delta", "thinking": block.get("thinking", "")}
            if block.get("signature"):
                extra.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # redacted_thinking arrives whole
            first = block
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": first}))
        for d in ([delta] if delta is not None else []) + extra:
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                    "delta": d}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(_sse("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": msg.get("stop_reason"),
                                           "stop_sequence": msg.get("stop_sequence")},
        "usage": usage}))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def response_object(stored: dict[str, Any], call: Call) -> dict[str, Any]:
    """The stored Response as this request's (left in `call.final_response`, which the
    Responses ingress stores for `previous_response_id`)."""
    body = call.native_body or {}
    now = int(time.time())
    conv = call.conversation
    obj = {**stored, "id": call.response_id, "created_at": now, "model": call.model,
           "previous_response_id": conv.previous_id if conv is not None else None}
    if stored.get("completed_at") is not None:
        obj["completed_at"] = now
    for name in _ECHOED:
        obj[name] = body.get(name, True if name == "store" else None)
    if obj["metadata"] is None:
        obj["metadata"] = {}
    call.final_response = obj
    return obj


class _Seq:
    def __init__(self) -> None:
        self.n = 0
        self.out: list[bytes] = []

    def emit(self, kind: str, **fields: Any) -> None:
        self.out.append(_sse(kind, {"type": kind, **fields, "sequence_number": self.n}))
        self.n += 1


def response_events(obj: dict[str, Any]) -> bytes:
    """response.created, response.in_progress, each output item as added → its parts' deltas
    → done, response.completed with the whole object: the Responses API's typed events."""
    s = _Seq()
    pending = {**obj, "status": "in_progress", "output": [], "usage": None,
               "completed_at": None}
    s.emit("response.created", response=pending)
    s.emit("response.in_progress", response=pending)
    for index, item in enumerate(obj.get("output") or ()):
        _item_events(s, index, item)
    s.emit("response.completed", response=obj)
    return b"".join(s.out)


def _item_events(s: _Seq, index: int, item: dict[str, Any]) -> None:
    kind = item.get("type")
    at = {"item_id": item.get("id"), "output_index": index}
    if kind == "message":
        s.emit("response.output_item.added", output_index=index,
               item={**item, "status": "in_progress", "content": []})
        for ci, part in enumerate(item.get("content") or ()):
            is_text = part.get("type") == "output_text"
            key = "text" if is_text else "refusal"
            empty = {**part, key: ""}
            if is_text:
                empty["annotations"] = []
            s.emit("response.content_part.added", **at, content_index=ci, part=empty)
            name = "output_text" if is_text else "refusal"
            extra: dict[str, Any] = {"logprobs": []} if is_text else {}
            s.emit(f"response.{name}.delta", **at, content_index=ci,
                   delta=part.get(key, ""), **extra)
            s.emit(f"response.{name}.done", **at, content_index=ci,
                   **{key: part.get(key, "")}, **extra)
            s.emit("response.content_part.done", **at, content_index=ci, part=part)
    elif kind == "function_call":
        s.emit("response.output_item.added", output_index=index,
               item={**item, "status": "in_progress", "arguments": ""})
        s.emit("response.function_call_arguments.delta", **at, delta=item.get("arguments", ""))
        s.emit("response.function_call_arguments.done", **at,
               arguments=item.get("arguments", ""))
    else:  # reasoning: the item whole (its summary is text the client reads from `done`)
        s.emit("response.output_item.added", output_index=index,
               item={**item, "status": "in_progress"} if "status" in item else item)
    s.emit("response.output_item.done", output_index=index, item=item)
