"""What the mock upstreams send for OpenAI's Responses API (`POST …/responses`), in OpenAI's
shapes (https://platform.openai.com/docs/api-reference/responses; the `openai` SDK's
`types.responses` is the schema, tests/unit/bench/test_mock_shapes.py checks it parses).

- `STATIC`: one completed Response object, served by nginx as it serves the static chat
  completion: one `message` item of `output_text`, `usage` with its `…_details`.
- `stream_events`: the typed events of one streamed Response (`event: <type>` + `data` with
  `type` and `sequence_number` from 0), grouped by when the mock writes them: the lifecycle
  events up to the open content part, then one `response.output_text.delta` per delay, then
  the `….done` events and `response.completed` with usage. It has the chat stream's timing:
  a first batch after one delay, then `chunks - 1` deltas, one per delay.
"""

from __future__ import annotations

import json
from typing import Any

# Fixed ids: the gateway rewrites the response id in every reply all the same (clients only
# see its own `resp_…` ids), and a fixed reply is what lets nginx serve it from memory.
RESPONSE_ID = "resp_bench0123456789abcdef0123456789abcdef01234567"
MESSAGE_ID = "msg_bench0123456789abcdef0123456789abcdef012345678"
TEXT = "Hello! How can I help you today?"
INPUT_TOKENS = 12
CREATED = 1_700_000_000


def _usage(output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + output_tokens}


def response_object(model: str, *, status: str, text: str | None,
                    usage: dict[str, Any] | None) -> dict[str, Any]:
    """A Response as OpenAI sends it; `text` None: no output yet (`response.created`)."""
    output = [] if text is None else [_message(text, "completed")]
    return {
        "id": RESPONSE_ID, "object": "response", "created_at": CREATED, "status": status,
        "background": False, "completed_at": CREATED if status == "completed" else None,
        "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "max_tool_calls": None, "model": model, "output": output,
        "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": usage, "user": None, "metadata": {},
    }


def _message(text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] \
        if status == "completed" else []
    return {"id": MESSAGE_ID, "type": "message", "status": status, "role": "assistant",
            "content": content}


STATIC = json.dumps(response_object("bench-responses", status="completed", text=TEXT,
                                    usage=_usage(9)), separators=(",", ":")).encode()


def _typed(kind: str, seq: int, **fields: Any) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": seq, **fields}, separators=(",", ":"))
    return b"event: " + kind.encode() + b"\ndata: " + data.encode() + b"\n\n"


def stream_events(model: str, chunks: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The SSE events of one stream: (the first batch, the deltas, the closing events)."""
    shell = response_object(model, status="in_progress", text=None, usage=None)
    ref = {"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    first = [_typed("response.created", 0, response=shell),
             _typed("response.in_progress", 1, response=shell),
             _typed("response.output_item.added", 2, output_index=0,
                    item=_message("", "in_progress")),
             _typed("response.content_part.added", 3, **ref, part=empty_part)]
    pieces = [f" tok{i}" for i in range(1, chunks)]
    seq = 4
    deltas = []
    for piece in pieces:
        deltas.append(_typed("response.output_text.delta", seq, **ref, delta=piece,
                             logprobs=[]))
        seq += 1
    text = "".join(pieces)
    part = {**empty_part, "text": text}
    final = response_object(model, status="completed", text=text, usage=_usage(len(pieces)))
    # No `data: [DONE]` after these: a Responses stream ends with its terminal event.
    closing = [_typed("response.output_text.done", seq, **ref, text=text, logprobs=[]),
               _typed("response.content_part.done", seq + 1, **ref, part=part),
               _typed("response.output_item.done", seq + 2, output_index=0,
                      item=final["output"][0]),
               _typed("response.completed", seq + 3, response=final)]
    return first, deltas, closing
