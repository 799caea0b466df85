"""OpenAI's Responses API (`POST /v1/responses`) as the fakes serve it; Azure's paths reuse it.

Shapes follow the API reference (https://platform.openai.com/docs/api-reference/responses),
with the `openai` SDK's `types/responses` as the schema: a `response` object (pretty-printed, as
OpenAI sends it); a stream of typed SSE events (`event: <type>` and the same `type` in the
compact JSON `data`), each with a `sequence_number` from 0, in the documented order:
`response.created`, `response.in_progress`, then per output item `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`… `.done`,
`response.content_part.done` (or `response.function_call_arguments.delta`… `.done`),
`response.output_item.done`, and last `response.completed` (or `response.incomplete`). No
`[DONE]`: OpenAI's Responses streams end with the terminal event.

What the fake answers:
- the server's words ("Hello0 word1 …"), one delta each; `max_output_tokens` below that cuts
  the text and the response is `incomplete` (`max_output_tokens`);
- a `function_call` (arguments `FUNCTION_ARGUMENTS`) instead, when the request has a function
  tool and the last user text says `call <tool name>`;
- a `reasoning` item first, when the request has `reasoning` and the server `reasoning_tokens`;
- `usage` from the server's `prompt_tokens`, `cached_tokens` and `reasoning_tokens`
  (`input_tokens` includes the cached ones, `output_tokens` the reasoning ones, as OpenAI's do);
- stored responses (unless `store: false`): `previous_response_id` must name one, or the reply is
  OpenAI's 400 `previous_response_not_found`; `stored[id]` holds each one's input and response.

The server's faults apply as to chat: `fail_next`, `delay_next`, `hang_next`,
`drop_stream_after(n)` / `stall_stream_after(n)` (before event n), `error_event_after(n, body)`
(event n is an `error` event; `body="response.failed"` makes it a `response.failed` instead).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, Fault

FUNCTION_ARGUMENTS = '{"city":"Paris"}'


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def sse(obj: dict[str, Any]) -> bytes:
    """One typed event: `event:` line and compact JSON, as OpenAI writes them."""
    return (b"event: " + obj["type"].encode() + b"\ndata: "
            + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def input_text(value: Any) -> str:
    """The text of the last user message in a Responses `input` (string or items)."""
    if isinstance(value, str):
        return value
    text = ""
    for item in value if isinstance(value, list) else ():
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = " ".join(p.get("text", "") for p in content
                            if isinstance(p, dict) and p.get("type") == "input_text")
    return text


def openai_error(status: int, message: str, param: str | None, code: str | None,
                 etype: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": etype, "param": param,
                                        "code": code}}, status=status)


class ResponsesWire:
    """The Responses endpoint of one fake server: builds replies and event streams from its
    settings (`words`, `prompt_tokens`, `cached_tokens`, `reasoning_tokens`, `max_context`)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        # Response id → {"input": the request's input items, "response": the Response object}.
        self.stored: dict[str, dict[str, Any]] = {}

    def _setting(self, name: str, default: Any) -> Any:
        return getattr(self.server, name, default)

    async def serve(self, request: web.Request, body: Any, model: str) -> web.StreamResponse:
        """Answer one recorded, authorised request; `model` is what the reply names."""
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.",
                                None, None)
        fault = self.server.poison_fault(body) or self.server.take_fault()
        pre = await self.server.apply_pre_fault(fault)
        if pre is not None:
            return pre
        prev = body.get("previous_response_id")
        if prev is not None and prev not in self.stored:
            return openai_error(400, f"Previous response with id '{prev}' not found.",
                                "previous_response_id", "previous_response_not_found")
        limit = self._setting("max_context", None)
        if limit is not None and len(json.dumps(body.get("input") or "")) > limit:
            return openai_error(400, f"Your input exceeds the context window of this model "
                                f"({limit} tokens). Please adjust your input and try again.",
                                "input", "context_length_exceeded")
        final, stream_events = self._build(body, model)
        if body.get("store") is not False:
            items = body.get("input")
            self.stored[final["id"]] = {
                "input": [{"type": "message", "role": "user", "content": items}]
                if isinstance(items, str) else list(items or []), "response": final}
        if not body.get("stream"):
            return web.Response(text=json.dumps(final, indent=2),
                                content_type="application/json")
        return await self.server.stream(
            request, stream_events, fault,
            {"type": "error", "code": "server_error", "message": "injected mid-stream error",
             "param": None}, frame=self._fault_frame(fault, final))

    def _fault_frame(self, fault: Fault | None, final: dict[str, Any]) -> Any:
        seq = fault.after_chunks if fault is not None else 0

        def frame(obj: Any) -> bytes:
            if obj == "response.failed":
                failed = {**final, "status": "failed", "output": [], "usage": None,
                          "error": {"code": "server_error",
                                    "message": "The model failed to generate a response."}}
                return sse({"type": "response.failed", "sequence_number": seq,
                            "response": failed})
            event = dict(obj)
            event.setdefault("type", "error")
            event.setdefault("sequence_number", seq)
            return sse(event)

        return frame

    # ---- the reply ---------------------------------------------------------------------------

    def _build(self, body: dict[str, Any], model: str) -> tuple[dict[str, Any], list[bytes]]:
        """The final Response object, and the events that stream it."""
        words: list[str] = list(self.server.text())  # type: ignore[attr-defined]
        reasoning = int(self._setting("reasoning_tokens", 0)) if body.get("reasoning") else 0
        limit = body.get("max_output_tokens")
        incomplete = isinstance(limit, int) and limit < len(words) + reasoning
        if incomplete:
            words = words[: max(0, limit - reasoning)]
        tool = self._called_tool(body)
        output: list[dict[str, Any]] = []
        if reasoning:
            output.append({"id": _id("rs"), "type": "reasoning", "summary": []})
        if tool is not None:
            pieces = [FUNCTION_ARGUMENTS[:8], FUNCTION_ARGUMENTS[8:]]
            output.append({"id": _id("fc"), "type": "function_call", "status": "completed",
                           "call_id": _id("call"), "name": tool,
                           "arguments": FUNCTION_ARGUMENTS})
        else:
            pieces = words
            output.append({"id": _id("msg"), "type": "message",
                           "status": "incomplete" if incomplete else "completed",
                           "role": "assistant",
                           "content": [{"type": "output_text", "text": "".join(words),
                                        "annotations": [], "logprobs": []}]})
        shell = self._response(body, model)
        final = {**shell, "status": "incomplete" if incomplete else "completed",
                 "completed_at": None if incomplete else int(time.time()),
                 "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                 "output": output, "usage": self._usage(len(pieces), reasoning)}
        return final, _events(shell, final, pieces)

    def _called_tool(self, body: dict[str, Any]) -> str | None:
        text = input_text(body.get("input"))
        for t in body.get("tools") or []:
            name = t.get("name") if isinstance(t, dict) and t.get("type") == "function" else None
            if name and f"call {name}" in text:
                return str(name)
        return None

    def _response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The Response object as `response.created` shows it: in progress, no output."""
        reasoning = body.get("reasoning")
        return {
            "id": _id("resp"), "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "background": False, "completed_at": None, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
            "model": model, "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": None}
            if isinstance(reasoning, dict) else {"effort": None, "summary": None},
            "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": None,
            "user": body.get("user"), "metadata": body.get("metadata") or {},
        }

    def _usage(self, output: int, reasoning: int) -> dict[str, Any]:
        prompt = int(self._setting("prompt_tokens", 11))
        cached = int(self._setting("cached_tokens", 0))
        return {"input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": output + reasoning,
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": prompt + output + reasoning}


def _events(shell: dict[str, Any], final: dict[str, Any], pieces: list[str]) -> list[bytes]:
    """The stream of `final`, in the documented order; `pieces` are the deltas."""
    out: list[dict[str, Any]] = [{"type": "response.created", "response": shell},
                                 {"type": "response.in_progress", "response": shell}]
    for index, item in enumerate(final["output"]):
        kind = item["type"]
        if kind == "reasoning":
            out += [{"type": "response.output_item.added", "output_index": index,
                     "item": {**item}},
                    {"type": "response.output_item.done", "output_index": index, "item": item}]
            continue
        ref = {"item_id": item["id"], "output_index": index}
        if kind == "function_call":
            out.append({"type": "response.output_item.added", "output_index": index,
                        "item": {**item, "status": "in_progress", "arguments": ""}})
            out += [{"type": "response.function_call_arguments.delta", **ref, "delta": p}
                    for p in pieces]
            out.append({"type": "response.function_call_arguments.done", **ref,
                        "arguments": item["arguments"]})
        else:
            part = item["content"][0]
            out.append({"type": "response.output_item.added", "output_index": index,
                        "item": {**item, "status": "in_progress", "content": []}})
            out.append({"type": "response.content_part.added", **ref, "content_index": 0,
                        "part": {**part, "text": ""}})
            out += [{"type": "response.output_text.delta", **ref, "content_index": 0,
                     "delta": p, "logprobs": []} for p in pieces]
            out += [{"type": "response.output_text.done", **ref, "content_index": 0,
                     "text": part["text"], "logprobs": []},
                    {"type": "response.content_part.done", **ref, "content_index": 0,
                     "part": part}]
        out.append({"type": "response.output_item.done", "output_index": index, "item": item})
    terminal = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    out.append({"type": terminal, "response": final})
    return [sse({"type": e["type"], "sequence_number": n,
                 **{k: v for k, v in e.items() if k != "type"}}) for n, e in enumerate(out)]
