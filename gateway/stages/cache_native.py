"""Native pass-through replies in the response cache: what makes an Anthropic Messages reply or
a Responses API object worth replaying, and the watchers that keep a native stream's reply.

A native reply (Anthropic ingress → Anthropic backend, Responses ingress → a backend serving the
Responses API) reaches the client untranslated, so it is stored in its own shape and replayed in
it (`cache_replay.py`): nothing is lost to a round trip through the chat shape (thinking
blocks and their signatures, reasoning items, annotations). Its key is the client's own body
(`cache_key.keyed_request`), so an entry is only ever replayed to the API that produced it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.stages.base import ReplyInfo
from gateway.stages.cache_stream import SSECapture

if TYPE_CHECKING:
    from gateway.stages.cache import CacheRun

# Anthropic `stop_reason`s of a complete answer (`max_tokens` is cut short, `refusal` and
# `pause_turn` are not answers to replay).
_ANTHROPIC_DONE = frozenset({"end_turn", "stop_sequence"})
_ANTHROPIC_BLOCKS = frozenset({"text", "thinking", "redacted_thinking", "tool_use"})
# Responses output items a replay reproduces; anything else (web search, file search, code
# interpreter, image generation, MCP, computer use…) ran a tool for fresh data.
_RESPONSES_ITEMS = frozenset({"message", "reasoning", "function_call"})


def anthropic_storable(msg: Any, tools_ok: bool) -> bool:
    """A complete Anthropic `message`: finished by itself (or calling tools, when allowed)."""
    if not isinstance(msg, dict) or msg.get("type") != "message":
        return False
    content = msg.get("content")
    if not isinstance(content, list) or not all(
            isinstance(b, dict) and b.get("type") in _ANTHROPIC_BLOCKS for b in content):
        return False
    calls = any(b["type"] == "tool_use" for b in content)
    if calls or msg.get("stop_reason") == "tool_use":
        return tools_ok
    return msg.get("stop_reason") in _ANTHROPIC_DONE


def responses_storable(obj: Any, tools_ok: bool) -> bool:
    """A `completed` Response whose items a replay reproduces (function calls when allowed)."""
    if not isinstance(obj, dict) or obj.get("status") != "completed" or obj.get("error"):
        return False
    output = obj.get("output")
    if not isinstance(output, list) or not output:
        return False
    kinds = set()
    for item in output:
        if not isinstance(item, dict) or item.get("type") not in _RESPONSES_ITEMS:
            return False
        kinds.add(item["type"])
    return tools_ok or "function_call" not in kinds


class AnthropicCapture(SSECapture):
    """Assembles the `message` a native Anthropic stream adds up to (the events pass through
    unchanged); kept only when the stream ended complete (`finish`)."""

    def __init__(self, run: CacheRun, info: ReplyInfo) -> None:
        super().__init__(run, info)
        self.message: dict[str, Any] | None = None
        self.blocks: list[dict[str, Any]] = []
        self.json_parts: dict[int, list[str]] = {}

    def _event(self, data: bytes) -> None:
        try:
            ev = msgspec.json.decode(data)
        except ValueError:
            self.ok = False
            return
        kind = ev.get("type") if isinstance(ev, dict) else None
        try:
            if kind == "message_start":
                self.message = dict(ev["message"])
            elif kind == "content_block_start":
                self.blocks.append(dict(ev["content_block"]))
            elif kind == "content_block_delta":
                self._delta(int(ev["index"]), ev["delta"])
            elif kind == "message_delta":
                assert self.message is not None
                self.message.update(ev.get("delta") or {})
                self.message["usage"] = {**(self.message.get("usage") or {}),
                                         **(ev.get("usage") or {})}
        except (KeyError, TypeError, ValueError, IndexError, AssertionError):
            self.ok = False

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self.blocks[index]
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
        elif kind == "input_json_delta":
            self.json_parts.setdefault(index, []).append(delta["partial_json"])
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]
        else:
            self.ok = False  # citations and other deltas a replay would not reproduce

    def assembled(self) -> dict[str, Any] | None:
        if not self.ok or self.message is None:
            return None
        for index, parts in self.json_parts.items():
            text = "".join(parts)
            self.blocks[index]["input"] = msgspec.json.decode(text) if text else {}
        return {**self.message, "content": self.blocks}

    async def finish(self) -> None:
        try:
            msg = self.assembled()
        except ValueError:
            return
        if msg is not None:
            self.run.keep_native(msg, self.info, self.info.translator.usage
                                 if self.info.translator is not None else None)


class ResponsesCapture(SSECapture):
    """A native Responses stream: its terminal `response.completed` event carries the whole
    Response (with the gateway's ids), read from the bytes this watcher is fed — what the
    client gets, after any output guard before the cache — and kept at `finish`."""

    def __init__(self, run: CacheRun, info: ReplyInfo) -> None:
        super().__init__(run, info)
        self.final: dict[str, Any] | None = None

    def _event(self, data: bytes) -> None:
        # Only the terminal event is parsed (a quote inside a JSON string is escaped, so a
        # delta's text cannot match).
        if data.find(b'"response.completed"') < 0:  # not `in`: see sse.has_any
            return
        try:
            ev = msgspec.json.decode(data)
        except ValueError:
            self.ok = False
            return
        if isinstance(ev, dict) and ev.get("type") == "response.completed" and \
                isinstance(ev.get("response"), dict):
            self.final = ev["response"]

    async def finish(self) -> None:
        if self.ok and self.final is not None:
            self.run.keep_native(self.final, self.info, self.info.translator.usage
                                 if self.info.translator is not None else None)
