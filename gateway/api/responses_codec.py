"""The `/v1/responses` ingress codec: chat completion replies and streams → Responses' objects
and typed events, and errors in OpenAI's shape.

The proxy applies it when a Responses client is served by translation to chat (every backend
without a native Responses API). The chat side is always OpenAI-shaped — the adapters normalise
every provider to it — with the usage chunk at the end, which the request asked for. Usage for
accounting never comes from here: the adapter's translator already reported it.
Reference: https://platform.openai.com/docs/api-reference/responses/object and
.../responses-streaming; the `openai` SDK's `types/responses` is the schema the tests check.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic_core import from_json, to_json

from gateway.accounting.usage import Usage, from_openai
from gateway.call import Call
from gateway.errors import GatewayError, error_json
from gateway.ids import new_id
from gateway.providers.sse import SSEEvents

# chat finish_reason → Responses' incomplete_details.reason (anything else: completed).
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# `response.failed` takes only OpenAI's own error codes (ResponseError.code); the gateway's
# code travels in the `error` event that follows it.
_FAILED_CODES = {"rate_limit_exceeded": "rate_limit_exceeded"}


def _event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + to_json(obj) + b"\n\n"


def _hex(call: Call) -> str:
    """The hex of the response's id, which its items' ids share. The ingress assigns the id;
    a call without one gets one here, so the client's object and the stored one agree."""
    if not call.response_id:
        call.response_id = "resp_" + new_id()
    return call.response_id.removeprefix("resp_")


def response_usage(u: Usage | None) -> dict[str, Any] | None:
    """Responses' `usage` (inclusive totals, details split out, like chat's)."""
    if u is None:
        return None
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cache_read,
                                     "cache_write_tokens": u.cache_write},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.total}


def response_object(call: Call, *, status: str, output: list[dict[str, Any]],
                    usage: Usage | None, created_at: int, finish: Any = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Response object, with the request's settings echoed as OpenAI echoes them."""
    body = call.native_body or {}
    reason = _INCOMPLETE.get(str(finish)) if status == "incomplete" else None
    return {
        "id": "resp_" + _hex(call), "object": "response",
        "created_at": created_at, "status": status, "background": False, "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": call.model,
        "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True), "temperature": body.get("temperature"),
        "text": {"format": {"type": "text"}, **(body.get("text") or {})},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p"), "truncation": body.get("truncation", "disabled"),
        "usage": response_usage(usage), "user": body.get("user"),
        "metadata": body.get("metadata") or {},
        "completed_at": int(time.time()) if status == "completed" else None,
    }


def _status(finish: Any) -> str:
    """The response's status, and its last item's: cut short, or complete."""
    return "incomplete" if str(finish) in _INCOMPLETE else "completed"


def _reasoning_text(m: dict[str, Any]) -> str:
    # `reasoning_content` is vLLM's and DeepSeek's field (and our adapters'); newer vLLM
    # releases name it `reasoning`.
    text = m.get("reasoning_content") or m.get("reasoning")
    return text if isinstance(text, str) else ""


class _Items:
    """Output items in order; ids derive from the response's, so the stream's items and the
    final object's agree without keeping a table."""

    def __init__(self, rid_hex: str) -> None:
        self.rid_hex = rid_hex
        self.output: list[dict[str, Any]] = []

    def new(self, prefix: str, item: dict[str, Any]) -> dict[str, Any]:
        item = {"id": f"{prefix}_{self.rid_hex}{len(self.output):04x}", **item}
        self.output.append(item)
        return item

    def message(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        return self.new("msg", {"type": "message", "status": "in_progress", "content": content,
                                "role": "assistant"})

    def reasoning(self, text: str) -> dict[str, Any]:
        return self.new("rs", {"type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": text}], "status": "in_progress"})

    def function_call(self, call_id: Any, name: Any, arguments: str) -> dict[str, Any]:
        index = len(self.output)
        return self.new("fc", {
            "type": "function_call", "status": "in_progress", "arguments": arguments,
            "call_id": call_id or f"call_{self.rid_hex}{index:04x}", "name": name or ""})


def _part(kind: str) -> dict[str, Any]:
    return {"type": "output_text", "text": "", "annotations": []} if kind == "output_text" \
        else {"type": "refusal", "refusal": ""}


class ResponsesEventStream:
    """OpenAI `chat.completion.chunk` SSE → Responses stream events, numbered from 0.

    Items are sequential, as OpenAI sends them: a reasoning, text or tool-call delta opens its
    item (closing the one before), `finish_reason` closes the last, and `[DONE]` (or `finish`)
    sends `response.completed` — or `response.incomplete` — with the whole Response, usage
    included, which is also left in `call.final_response`.
    """

    __slots__ = (
        "_call",
        "_closed",
        "_created_at",
        "_events",
        "_finish",
        "_index",
        "_items",
        "_open",
        "_part",
        "_seq",
        "_started",
        "_tools",
        "_usage",
        "done",
    )

    def __init__(self, call: Call) -> None:
        self._call = call
        self._items = _Items(_hex(call))
        self._events = SSEEvents()
        self._seq = 0
        self._started = False
        self._closed = False
        self._created_at = 0
        self._open: dict[str, Any] | None = None  # the item taking deltas
        self._index = -1  # its output_index
        self._part: dict[str, Any] | None = None  # its content part taking deltas
        self._tools: dict[int, tuple[int, dict[str, Any]]] = {}  # chat index → (index, item)
        self._finish: Any = None
        self._usage: Usage | None = None
        self.done = False

    def _emit(self, kind: str, **fields: Any) -> bytes:
        fields["sequence_number"] = self._seq
        self._seq += 1
        return _event({"type": kind, **fields})

    def _response(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        output = self._items.output if status != "in_progress" else []
        return response_object(self._call, status=status, output=output, usage=self._usage,
                               created_at=self._created_at, finish=self._finish, error=error)

    # ---- chat SSE in ------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for _name, payload, _raw in self._events.feed(data):
            if payload == b"[DONE]":
                out.append(self._close())
                continue
            try:
                obj = from_json(payload) if payload else None
            except ValueError:
                continue
            if isinstance(obj, dict) and not self._closed:
                out.append(self._chunk(obj))
        return b"".join(out)

    def _start(self, created: Any) -> bytes:
        self._started = True
        self._created_at = created if isinstance(created, int) else int(time.time())
        response = self._response("in_progress")
        return (self._emit("response.created", response=response)
                + self._emit("response.in_progress", response=response))

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        out = b"" if self._started else self._start(obj.get("created"))
        usage = from_openai(obj.get("usage"))
        if usage is not None:
            self._usage = usage
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Responses has no `n`
            delta = choice.get("delta") or {}
            reasoning = _reasoning_text(delta)
            if reasoning:
                out += self._reasoning_delta(reasoning)
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                if isinstance(delta.get(key), str) and delta[key]:
                    out += self._text_delta(kind, delta[key])
            for tc in delta.get("tool_calls") or []:
                if isinstance(tc, dict):
                    out += self._tool_delta(tc)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                out += self._close_item()
        return out

    # ---- items ------------------------------------------------------------------------------

    def _begin(self, item: dict[str, Any]) -> bytes:
        out = self._close_item()
        self._open, self._index = item, len(self._items.output) - 1
        return out + self._emit("response.output_item.added", output_index=self._index,
                                item=item)

    def _at(self, content_index: int) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": self._index,
                "content_index": content_index}

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != "reasoning":
            item = self._items.reasoning("")
            part = item["content"].pop()
            out = self._begin(item) + self._emit("response.content_part.added", **self._at(0),
                                                 part=part)
            item["content"].append(part)
        assert self._open is not None
        self._open["content"][0]["text"] += text
        return out + self._emit("response.reasoning_text.delta", **self._at(0), delta=text)

    def _text_delta(self, kind: str, text: str) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != "message":
            out = self._begin(self._items.message([]))
        assert self._open is not None
        content = self._open["content"]
        if self._part is None or self._part["type"] != kind:
            out += self._close_part()
            self._part = _part(kind)
            out += self._emit("response.content_part.added", **self._at(len(content)),
                              part=self._part)
            content.append(self._part)
        key = "text" if kind == "output_text" else "refusal"
        self._part[key] += text
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        return out + self._emit(f"response.{kind}.delta", **self._at(len(content) - 1),
                                delta=text, **extra)

    def _tool_delta(self, tc: dict[str, Any]) -> bytes:
        fn = tc.get("function") or {}
        out = b""
        known = self._tools.get(tc.get("index", 0))
        if known is None:
            item = self._items.function_call(tc.get("id"), fn.get("name"), "")
            out = self._begin(item)
            known = self._tools[tc.get("index", 0)] = (self._index, item)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            index, item = known
            item["arguments"] += args
            # A fragment for a call already closed (interleaved parallel calls, which no known
            # backend sends) still names its own item, which the SDK accumulates by.
            out += self._emit("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=index, delta=args)
        return out

    def _close_part(self) -> bytes:
        part, self._part = self._part, None
        if part is None or self._open is None:
            return b""
        at = self._at(len(self._open["content"]) - 1)
        if part["type"] == "output_text":
            out = self._emit("response.output_text.done", **at, text=part["text"], logprobs=[])
        else:
            out = self._emit("response.refusal.done", **at, refusal=part["refusal"])
        return out + self._emit("response.content_part.done", **at, part=part)

    def _close_item(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        if item["type"] == "message":
            out = self._close_part()
        elif item["type"] == "reasoning":
            part = item["content"][0]
            out = (self._emit("response.reasoning_text.done", **self._at(0), text=part["text"])
                   + self._emit("response.content_part.done", **self._at(0), part=part))
        else:
            out = self._emit("response.function_call_arguments.done", item_id=item["id"],
                             output_index=self._index, arguments=item["arguments"])
        item["status"] = _status(self._finish)
        out += self._emit("response.output_item.done", output_index=self._index, item=item)
        self._open = None
        return out

    # ---- the end ----------------------------------------------------------------------------

    def _close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = self.done = True
        out = b"" if self._started else self._start(None)
        out += self._close_item()
        if not self._items.output:
            # A reply with no content still has its (empty) message, as `reply` gives it.
            out += self._begin(self._items.message([]))
            self._part = _part("output_text")
            out += self._emit("response.content_part.added", **self._at(0), part=self._part)
            self._items.output[0]["content"].append(self._part)
            out += self._close_item()
        status = _status(self._finish)
        response = self._response(status)
        self._call.final_response = response
        return out + self._emit(f"response.{status}", response=response)

    def finish(self) -> bytes:
        return self._close()

    def error_event(self, exc: GatewayError) -> bytes:
        """A mid-stream failure: `response.failed` with what was produced so far, then an
        `error` event, which the SDK raises on (its stream reads an `error` key as a failure),
        numbered on from the events already sent."""
        if self._closed:
            return b""
        self._closed = True
        out = b"" if self._started else self._start(None)
        if self._open is not None:
            self._open["status"] = "incomplete"
        failed = {"code": _FAILED_CODES.get(str(exc.code), "server_error"),
                  "message": exc.message}
        out += self._emit("response.failed", response=self._response("failed", failed))
        return out + _error_event(exc, self._seq)


def _error_event(exc: GatewayError, seq: int) -> bytes:
    # `code`/`message`/`param` are the typed event's fields; the nested `error` object is what
    # makes the openai SDK raise APIError instead of handing the event to the caller.
    return _event({"type": "error", "code": exc.code, "message": exc.message,
                   "param": exc.param, "sequence_number": seq,
                   "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                             "param": exc.param}})


class ResponsesCodec:
    """What the proxy needs to answer a Responses client from a chat backend: the reply, the
    stream, errors. Stateless: one instance serves every request."""

    def reply(self, chat_body: bytes, call: Call) -> bytes:
        try:
            obj = from_json(chat_body)
        except ValueError:
            return chat_body
        if not isinstance(obj, dict) or obj.get("object") == "response":
            return chat_body  # already a Response (a native backend)
        choice = (obj.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        finish = choice.get("finish_reason")
        items = _Items(_hex(call))
        reasoning = _reasoning_text(msg)
        if reasoning:
            items.reasoning(reasoning)
        parts: list[dict[str, Any]] = []
        if isinstance(msg.get("content"), str) and msg["content"]:
            parts.append({"type": "output_text", "text": msg["content"], "annotations": []})
        if isinstance(msg.get("refusal"), str) and msg["refusal"]:
            parts.append({"type": "refusal", "refusal": msg["refusal"]})
        calls = [tc for tc in msg.get("tool_calls") or [] if isinstance(tc, dict)]
        if parts or not calls:
            items.message(parts or [_part("output_text")])
        for tc in calls:
            fn = tc.get("function") or {}
            items.function_call(tc.get("id"), fn.get("name"), fn.get("arguments") or "")
        # As the stream has them: the last item is cut short with the response, if it is.
        status = _status(finish)
        for item in items.output:
            item["status"] = "completed"
        items.output[-1]["status"] = status
        created = obj.get("created")
        response = response_object(
            call, status=status, output=items.output, usage=from_openai(obj.get("usage")),
            created_at=created if isinstance(created, int) else int(time.time()),
            finish=finish)
        call.final_response = response
        return to_json(response)

    def stream(self, call: Call) -> ResponsesEventStream:
        return ResponsesEventStream(call)

    def error_body(self, exc: GatewayError) -> bytes:
        return error_json(exc)

    def error_event(self, exc: GatewayError) -> bytes:
        """A mid-stream failure where no stream state is at hand (a native stream's
        translator without its own): the `error` event alone."""
        return _error_event(exc, 0)


CODEC = ResponsesCodec()
