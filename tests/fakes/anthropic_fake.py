"""A fake Anthropic Messages API (`POST /v1/messages`), strict like the real one.

Shapes follow https://docs.anthropic.com/en/api/messages and .../messages-streaming: a Message
object, or `event:`-named SSE events (message_start, ping, content_block_start/delta/stop,
message_delta, message_stop). Errors are `{"type": "error", "error": {"type", "message"}}`.

Validation rejects what Anthropic rejects, with its messages: a missing or wrong `x-api-key`,
no `anthropic-version`, no `max_tokens`, unknown top-level fields (OpenAI-only ones leaking
through), consecutive turns of one role, empty text blocks, tool results that answer nothing,
tool uses left unanswered, a final assistant turn ending in whitespace.

Scripting is `FakeServer`'s (fail_next, delay_next, hang_next, drop_stream_after,
stall_stream_after, error_event_after) plus `reply_next(content, stop_reason)`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, hello_words

# Top-level fields of a Messages request (the SDK's `messages.create` parameters, and the
# sampling ones older models take).
_TOP = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier",
        "container", "mcp_servers", "context_management", "output_config", "cache_control",
        "diagnostics", "inference_geo", "speed", "user_profile_id", "workspace_id"}
# What `POST /v1/messages/count_tokens` takes (the SDK's `messages.count_tokens` parameters):
# no max_tokens, stream or sampling settings.
_COUNT_TOP = {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
              "output_config", "cache_control", "context_management", "speed",
              "user_profile_id", "workspace_id"}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 529: "overloaded_error"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def error_body(status: int, message: str, etype: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype or _TYPES.get(status, "api_error"),
                                       "message": message},
            "request_id": "req_fake"}


class Invalid(Exception):
    pass


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Invalid(f"{where}.content: Input should be a valid list")
    return content


def validate(body: Any) -> None:
    """Raise Invalid with Anthropic's message for what its API rejects."""
    if not isinstance(body, dict):
        raise Invalid("Input should be an object")
    for key in body:
        if key not in _TOP:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise Invalid(f"{key}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    for key in ("temperature", "top_p"):
        v = body.get(key)
        if v is not None and not (isinstance(v, int | float) and 0 <= v <= 1):
            raise Invalid(f"{key}: Input should be less than or equal to 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        for j, b in enumerate(system):
            if b.get("type") != "text" or not b.get("text"):
                raise Invalid(f"system.{j}: text content blocks must be non-empty")
    msgs = body["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise Invalid("messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids the next user turn must answer
    prev_role = None
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if role == prev_role:
            raise Invalid(f'messages: roles must alternate between "user" and "assistant", '
                          f'but found multiple "{role}" roles in a row')
        blocks = _blocks(m.get("content"), f"messages.{i}")
        answered: set[str] = set()
        for j, b in enumerate(blocks):
            kind = b.get("type")
            if kind == "text" and not b.get("text"):
                raise Invalid(f"messages.{i}.content.{j}.text: text content blocks must be "
                              "non-empty")
            if kind == "tool_result":
                if role != "user" or b.get("tool_use_id") not in pending:
                    raise Invalid(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                                  "`tool_result` blocks: " + str(b.get("tool_use_id")) + ". "
                                  "Each `tool_result` block must have a corresponding "
                                  "`tool_use` block in the previous message.")
                answered.add(b["tool_use_id"])
            elif kind == "tool_use":
                if role != "assistant" or not isinstance(b.get("input"), dict):
                    raise Invalid(f"messages.{i}.content.{j}: tool_use blocks need an input "
                                  "object in an assistant message")
            elif kind == "image":
                src = b.get("source") or {}
                if src.get("type") not in ("base64", "url"):
                    raise Invalid(f"messages.{i}.content.{j}.source: Input tag "
                                  f"{src.get('type')!r} found does not match expected tags")
            elif kind not in ("text", "document", "thinking", "redacted_thinking"):
                raise Invalid(f"messages.{i}.content.{j}.type: Input tag {kind!r} found using "
                              "'type' does not match any of the expected tags")
        if pending - answered:
            raise Invalid(f"messages.{i - 1}: `tool_use` ids were found without `tool_result` "
                          "blocks immediately after: " + ", ".join(sorted(pending - answered))
                          + ". Each `tool_use` block must have a corresponding `tool_result` "
                          "block in the next message.")
        pending = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        prev_role = role
    last = msgs[-1]
    if last["role"] == "assistant":
        blocks = _blocks(last["content"], "messages")
        if blocks and blocks[-1].get("type") == "text" and blocks[-1]["text"] != \
                blocks[-1]["text"].rstrip():
            raise Invalid("final assistant content cannot end with trailing whitespace")
    for j, t in enumerate(body.get("tools") or []):
        if t.get("type") in (None, "custom"):
            if not _TOOL_NAME.match(str(t.get("name"))):
                raise Invalid(f"tools.{j}.custom.name: String should match pattern "
                              f"'{_TOOL_NAME.pattern}'")
            if (t.get("input_schema") or {}).get("type") != "object":
                raise Invalid(f"tools.{j}.custom.input_schema.type: Input should be 'object'")
    tc = body.get("tool_choice")
    if tc is not None:
        if tc.get("type") not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice: Input tag found using 'type' does not match any of the "
                          "expected tags: 'auto', 'any', 'tool', 'none'")
        if tc["type"] == "tool" and not tc.get("name"):
            raise Invalid("tool_choice.tool.name: Field required")


def _event(name: str, obj: dict[str, Any]) -> bytes:
    """One named SSE event, as every Anthropic stream event is."""
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


class FakeAnthropic(FakeServer):
    def __init__(self, name: str = "anthropic", *, api_key: str = "sk-ant-fake-key",
                 words: int = 5, input_tokens: int = 11, cache_read: int = 0,
                 cache_write: int = 0, max_context: int = 100_000, omit_usage: bool = False,
                 port: int | None = None) -> None:
        super().__init__(name, port)
        self.api_key = api_key
        self.words = words
        self.input_tokens = input_tokens
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.max_context = max_context
        # Streams only: message_delta without usage (a stream's count then stops at
        # message_start's, as when a proxy in between strips it).
        self.omit_usage = omit_usage

    # ---- scripting ---------------------------------------------------------------------------

    def reply_next(self, content: list[dict[str, Any]], stop_reason: str = "end_turn") -> None:
        """The next successful reply has these content blocks (text, tool_use, thinking)."""
        self.queue_reply((content, stop_reason))

    def _reply(self) -> tuple[list[dict[str, Any]], str]:
        reply: tuple[list[dict[str, Any]], str] | None = self.next_reply()
        if reply is not None:
            return reply
        return [{"type": "text", "text": "".join(hello_words(self.words))}], "end_turn"

    def usage(self, output: int) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "cache_creation_input_tokens": self.cache_write,
                "cache_read_input_tokens": self.cache_read, "output_tokens": output}

    # ---- serving -----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)

    def _error(self, status: int, message: str, etype: str | None = None) -> web.Response:
        return web.json_response(error_body(status, message, etype), status=status)

    def fail_body(self, status: int) -> Any:
        return error_body(status, f"{self.name} injected failure")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        self.enter()
        try:
            if request.headers.get("x-api-key") != self.api_key:
                return self._error(401, "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                return self._error(400, "anthropic-version: header is required")
            fault = self.take_fault()
            pre = await self.apply_pre_fault(fault)
            if pre is not None:
                return pre
            try:
                validate(body)
            except Invalid as e:
                return self._error(400, str(e))
            size = len(json.dumps(body["messages"]))
            if size > self.max_context:
                return self._error(400, f"prompt is too long: {size} tokens > "
                                        f"{self.max_context} maximum")
            content, stop = self._reply()
            output = sum(len(json.dumps(b)) // 8 + 1 for b in content)
            msg = {"id": "msg_fake01", "type": "message", "role": "assistant",
                   "model": body["model"], "content": content, "stop_reason": stop,
                   "stop_sequence": None, "usage": self.usage(output)}
            if body.get("stream"):
                return await self.stream(
                    request, self._events(msg), fault,
                    error_body(529, "Overloaded", "overloaded_error"),
                    frame=lambda err: _event("error", err),
                    headers={"Content-Type": "text/event-stream; charset=utf-8",
                             "Cache-Control": "no-cache"})
            return web.json_response(msg)
        finally:
            self.leave()

    def _events(self, msg: dict[str, Any]) -> list[bytes]:
        start = {**msg, "content": [], "stop_reason": None,
                 "usage": {**msg["usage"], "output_tokens": 1}}
        out = [_event("message_start", {"type": "message_start", "message": start}),
               _event("ping", {"type": "ping"})]
        for i, block in enumerate(msg["content"]):
            kind = block["type"]
            if kind == "text":
                first: dict[str, Any] = {"type": "text", "text": ""}
                text = block["text"]
                pieces = [text[k:k + 6] for k in range(0, len(text), 6)]
                deltas = [{"type": "text_delta", "text": p} for p in pieces]
            elif kind == "thinking":
                first = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                          {"type": "signature_delta", "signature": block.get("signature", "s")}]
            else:
                first = {**block, "input": {}}
                js = json.dumps(block["input"])
                cut = len(js) // 2
                deltas = [{"type": "input_json_delta", "partial_json": p}
                          for p in ("", js[:cut], js[cut:])]
            out.append(_event("content_block_start", {"type": "content_block_start", "index": i,
                                                      "content_block": first}))
            out += [_event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": d}) for d in deltas]
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": msg["stop_reason"],
                                           "stop_sequence": None}}
        if not self.omit_usage:
            delta["usage"] = {"output_tokens": msg["usage"]["output_tokens"]}
        out.append(_event("message_delta", delta))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return out

    # ---- token counting (https://docs.anthropic.com/en/api/messages-count-tokens) -----------

    @staticmethod
    def token_count(body: dict[str, Any]) -> int:
        """The fake's count: a quarter of the JSON characters of what a prompt carries."""
        carried = [body.get("system"), body["messages"], body.get("tools")]
        return max(1, len(json.dumps(carried)) // 4)

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        if request.headers.get("x-api-key") != self.api_key:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        pre = await self.apply_pre_fault(self.take_fault())
        if pre is not None:
            return pre
        try:
            if not isinstance(body, dict):
                raise Invalid("Input should be an object")
            for key in body:
                if key not in _COUNT_TOP:
                    raise Invalid(f"{key}: Extra inputs are not permitted")
            # The same rules as a Messages request, but for the settings it does not take.
            validate({**body, "max_tokens": 1})
        except Invalid as e:
            return self._error(400, str(e))
        return web.json_response({"input_tokens": self.token_count(body)})
