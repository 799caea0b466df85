"""The `/v1/messages` ingress codec: OpenAI-shaped replies, streams and errors → Anthropic's.

The proxy applies it when an Anthropic client is served by a non-Anthropic backend. Usage for
accounting never comes from here: the adapter's translator already reported it.
Reference: https://docs.anthropic.com/en/api/messages, .../messages-streaming, .../errors
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from gateway.accounting.usage import Usage, from_openai
from gateway.call import Call, Principal
from gateway.errors import GatewayError
from gateway.providers.base import Classified, Target
from gateway.providers.sse import SSEEvents

# OpenAI finish_reason → Anthropic stop_reason.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
                529: "overloaded_error"}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _json(obj) + b"\n\n"


def _msg_id(openai_id: Any) -> str:
    s = str(openai_id or "")
    return s if s.startswith("msg_") else "msg_" + (s.removeprefix("chatcmpl-") or uuid.uuid4().hex)


def _usage(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    # Anthropic's input_tokens excludes both cache buckets, like our input_uncached.
    return {"input_tokens": u.input_uncached,
            "cache_creation_input_tokens": u.cache_write, "cache_read_input_tokens": u.cache_read,
            "output_tokens": u.completion_tokens}


def _stop(call: Call, finish: Any, matched: Any) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). vLLM names the stop string it matched (`stop_reason`)."""
    reason = STOP_REASONS.get(str(finish), "end_turn")
    stops = (call.native_body or {}).get("stop_sequences") or []
    if reason == "end_turn" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return reason, None


def _tool_input(arguments: Any) -> Any:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class OpenAIToAnthropicStream:
    """OpenAI `chat.completion.chunk` SSE → Anthropic Messages stream events.

    Anthropic blocks are sequential: each starts, takes deltas, stops. A text, thinking or tool
    call delta opens its block (closing the one before). Usage arrives last with an OpenAI
    backend, so `message_start` reports 0 input tokens and `message_delta` the real counts
    (the SDKs overwrite the snapshot's usage with it).
    """

    __slots__ = (
        "_block",
        "_call",
        "_closed",
        "_events",
        "_finish",
        "_matched",
        "_next",
        "_open",
        "_pass",
        "_started",
        "_tools",
        "_usage",
        "done",
        "error",
        "usage",
    )

    def __init__(self, call: Call) -> None:
        self._call = call
        self._events = SSEEvents()
        self._started = False
        self._closed = False
        self._open: str | None = None  # kind of the open block: text, thinking, tool
        self._block = -1  # index of the open block
        self._next = 0
        self._tools: dict[int, int] = {}  # OpenAI tool_calls index → Anthropic block index
        self._finish: Any = None
        self._matched: Any = None
        self._usage: Usage | None = None
        # The StreamTranslator shape, though the proxy reads usage from the adapter's translator.
        self.usage: Usage | None = None
        self.done = False
        self.error: Classified | None = None
        # A stream the adapter already produced in Anthropic's format (native): pass through.
        self._pass: bool | None = None

    def feed(self, data: bytes) -> bytes:
        if self._pass is None and data:
            self._pass = data.lstrip().startswith(b"event:")
        if self._pass:
            return data
        out: list[bytes] = []
        for _name, payload, _raw in self._events.feed(data):
            if payload == b"[DONE]":
                out.append(self._close())
                continue
            try:
                obj = json.loads(payload) if payload else None
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(self._chunk(obj))
        return b"".join(out)

    def _start(self, obj: dict[str, Any]) -> bytes:
        self._started = True
        return _event("message_start", {"type": "message_start", "message": {
            "id": _msg_id(obj.get("id")), "type": "message", "role": "assistant",
            "model": self._call.model, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": _usage(None)}})

    def _stop_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._stop_block()
        self._open, self._block = kind, self._next
        self._next += 1
        return out + _event("content_block_start", {"type": "content_block_start",
                                                    "index": self._block, "content_block": block})

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": delta})

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        out = [] if self._started else [self._start(obj)]
        usage = from_openai(obj.get("usage"))
        if usage is not None:
            self._usage = usage
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._open != "thinking":
                    out.append(self._begin("thinking", {"type": "thinking", "thinking": "",
                                                        "signature": ""}))
                out.append(self._delta(self._block, {"type": "thinking_delta",
                                                     "thinking": delta["reasoning_content"]}))
            if delta.get("content"):
                if self._open != "text":
                    out.append(self._begin("text", {"type": "text", "text": ""}))
                out.append(self._delta(self._block, {"type": "text_delta",
                                                     "text": delta["content"]}))
            for tc in delta.get("tool_calls") or []:
                out.append(self._tool_delta(tc))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
                out.append(self._stop_block())
        return b"".join(out)

    def _tool_delta(self, tc: dict[str, Any]) -> bytes:
        i = tc.get("index", 0)
        fn = tc.get("function") or {}
        out = b""
        if i not in self._tools:
            out = self._begin("tool", {"type": "tool_use",
                                       "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                                       "name": fn.get("name") or "", "input": {}})
            self._tools[i] = self._block
        if fn.get("arguments"):
            # A fragment for a block already stopped (interleaved parallel calls, which no
            # known backend sends) still names its own index, which the SDKs accumulate by.
            out += self._delta(self._tools[i], {"type": "input_json_delta",
                                                "partial_json": fn["arguments"]})
        return out

    def _close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = self.done = True
        self.usage = self._usage
        out = b"" if self._started else self._start({})
        reason, seq = _stop(self._call, self._finish or "stop", self._matched)
        return out + self._stop_block() + _event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq},
            "usage": _usage(self._usage)}) + _event("message_stop", {"type": "message_stop"})

    def finish(self) -> bytes:
        return b"" if self._pass else self._close()


class AnthropicCodec:
    """What the proxy needs to answer an Anthropic client: reply, stream, errors."""

    def reply(self, openai_body: bytes, call: Call) -> bytes:
        try:
            obj = json.loads(openai_body)
        except ValueError:
            return openai_body
        if not isinstance(obj, dict) or obj.get("type") == "message":
            return openai_body  # already Anthropic's (a native backend)
        choice = (obj.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if msg.get("reasoning_content"):
            content.append({"type": "thinking", "thinking": msg["reasoning_content"],
                            "signature": ""})
        if msg.get("content"):
            content.append({"type": "text", "text": msg["content"]})
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            content.append({"type": "tool_use",
                            "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                            "name": fn.get("name"), "input": _tool_input(fn.get("arguments"))})
        reason, seq = _stop(call, choice.get("finish_reason"), choice.get("stop_reason"))
        return _json({"id": _msg_id(obj.get("id")), "type": "message", "role": "assistant",
                      "model": call.model, "content": content, "stop_reason": reason,
                      "stop_sequence": seq, "usage": _usage(from_openai(obj.get("usage")))})

    def stream(self, call: Call) -> OpenAIToAnthropicStream:
        return OpenAIToAnthropicStream(call)

    def prepare(self, call: Call, principal: Principal) -> None:
        """Nothing to resolve before routing: the Messages API keeps no state (so nothing
        for the proxy to await)."""

    def completed(self, call: Call, target: Target, tenant: str) -> None:
        """Nothing to store."""

    def error_body(self, exc: GatewayError) -> bytes:
        etype = _ERROR_TYPES.get(exc.status) or ("api_error" if exc.status >= 500
                                                 else "invalid_request_error")
        return _json({"type": "error", "error": {"type": etype, "message": exc.message}})

    def error_event(self, exc: GatewayError) -> bytes:
        """A mid-stream failure, as Anthropic reports one (the SDKs raise on it)."""
        return b"event: error\ndata: " + self.error_body(exc) + b"\n\n"


CODEC = AnthropicCodec()
