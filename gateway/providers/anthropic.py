"""Anthropic Messages API (https://docs.anthropic.com/en/api/messages) ↔ OpenAI chat completions.

Non-native calls (the OpenAI ingress) are translated both ways, streams included; native calls
(the `/v1/messages` ingress) send the client's own body and pass the reply through, with only
`model` renamed to the public name and the usage read on the way. The request side of the
translation is `anthropic_request.py`; replies, streams, errors and the adapter are here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gateway.accounting.usage import Usage, from_anthropic
from gateway.call import Call, Endpoint, Ingress
from gateway.errors import InvalidRequest, UpstreamError
from gateway.policy.models import AnthropicProvider
from gateway.providers.anthropic_request import to_messages_request
from gateway.providers.base import Classified, ErrorKind, Reply, Target
from gateway.providers.http_errors import body_text, client_message, error_kind, parse_retry_after
from gateway.providers.openai_compat import ModelRename
from gateway.providers.openai_shape import assistant_message, completion
from gateway.providers.sse import ChunkWriter, SSEEvents, compact_json
from gateway.upstream import UpstreamRequest

# https://docs.anthropic.com/en/api/messages#response-stop-reason
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "tool_use": "tool_calls",
    "max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter",
}
# In-stream `error` events carry a type but no status: the status the same error has as an HTTP
# reply (https://docs.anthropic.com/en/api/errors).
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}
_CONTEXT_MARKERS = ("prompt is too long", "exceed context limit", "context window",
                    "too many tokens", "maximum context length")
# Headers of the client's request that reach Anthropic (beta features opt in per request).
_FORWARDED = ("anthropic-beta",)


def usage_of(u: Any) -> Usage | None:
    """Anthropic `usage` → Usage, splitting thinking tokens out when the reply reports them."""
    usage = from_anthropic(u)
    if usage is None:
        return None
    details = u.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    if isinstance(thinking, int) and 0 < thinking <= usage.output:
        usage = replace(usage, output=usage.output - thinking, reasoning=thinking)
    return usage


def merge_usage(into: dict[str, Any], u: Any) -> None:
    """`message_delta` usage counts are cumulative and omit what does not apply: overwrite."""
    if isinstance(u, dict):
        into.update({k: v for k, v in u.items() if v is not None})


def chat_completion(msg: dict[str, Any], public_model: str, usage: Usage | None) -> dict[str, Any]:
    """An Anthropic Message object → an OpenAI chat.completion object."""
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            tool_calls.append({
                "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"),
                             "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)},
            })
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
    reason = FINISH_REASONS.get(msg.get("stop_reason") or "", "stop")
    return completion(msg.get("id") or "", public_model, [{
        "index": 0, "message": assistant_message(texts, thinking, tool_calls), "logprobs": None,
        "finish_reason": reason}], usage)


class _EventReader:
    """What both stream directions read from Anthropic's events: usage, the end, errors."""

    __slots__ = ("_classify", "_events", "_usage", "chunks", "done", "error")

    def __init__(self, classify: Callable[[int, bytes], Classified]) -> None:
        self._events = SSEEvents()
        self._classify = classify
        self._usage: dict[str, Any] = {}
        # Content deltas forwarded: the proxy's output estimate should usage never arrive.
        self.chunks = 0
        self.done = False
        self.error: Classified | None = None

    @property
    def usage(self) -> Usage | None:
        return usage_of(self._usage) if self._usage else None

    def _error(self, ev: dict[str, Any], body: bytes) -> None:
        err = ev.get("error") or {}
        self.error = self._classify(ERROR_STATUS.get(str(err.get("type")), 500), body)


class AnthropicToOpenAIStream(_EventReader):
    """Anthropic stream events → OpenAI `chat.completion.chunk` SSE, usage read on the way."""

    __slots__ = ("_include_usage", "_out", "_pending", "_tools")

    def __init__(self, public_model: str, include_usage: bool,
                 classify: Callable[[int, bytes], Classified]) -> None:
        super().__init__(classify)
        self._out = ChunkWriter(public_model)
        self._include_usage = include_usage
        # Anthropic content-block index → OpenAI tool_calls index.
        self._tools: dict[int, int] = {}
        # The role chunk of `message_start`, held until content follows: Anthropic often sends
        # `message_start` then an `overloaded_error`, and while nothing has reached the client
        # the proxy can still fall back to another deployment.
        self._pending = b""

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._out.chunk([{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}])

    def feed(self, data: bytes) -> bytes:
        out = []
        for name, payload, _ in self._events.feed(data):
            if name == b"ping" or not payload:
                continue
            try:
                ev = json.loads(payload)
            except ValueError:
                continue
            chunk = self._event(ev) if isinstance(ev, dict) else None
            if chunk:
                out.append(self._pending + chunk)
                self._pending = b""
        return b"".join(out)

    def _event(self, ev: dict[str, Any]) -> bytes | None:
        kind = ev.get("type")
        if kind == "content_block_delta":
            self.chunks += 1
            delta = ev.get("delta") or {}
            dkind = delta.get("type")
            if dkind == "text_delta" and delta.get("text"):
                return self._chunk({"content": delta["text"]})
            if dkind == "input_json_delta" and delta.get("partial_json"):
                i = self._tools.get(ev.get("index", -1))
                if i is not None:
                    return self._chunk({"tool_calls": [
                        {"index": i, "function": {"arguments": delta["partial_json"]}}]})
            if dkind == "thinking_delta" and delta.get("thinking"):
                return self._chunk({"reasoning_content": delta["thinking"]})
            return None
        if kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "tool_use":
                i = self._tools[ev.get("index", -1)] = len(self._tools)
                return self._chunk({"tool_calls": [{
                    "index": i, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return None
        if kind == "message_start":
            msg = ev.get("message") or {}
            self._out.id = msg.get("id") or ""
            merge_usage(self._usage, msg.get("usage"))
            self._pending = self._chunk({"role": "assistant", "content": ""})
            return None
        if kind == "message_delta":
            merge_usage(self._usage, ev.get("usage"))
            reason = (ev.get("delta") or {}).get("stop_reason")
            return self._chunk({}, FINISH_REASONS.get(reason, "stop")) if reason else None
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            self._error(ev, compact_json(ev))
        return None

    def finish(self) -> bytes:
        tail, self._pending = self._pending, b""
        return tail + self._out.end(self.usage, self._include_usage)


class NativeStream(_EventReader):
    """Anthropic events passed through to an Anthropic client: `model` renamed, usage read."""

    __slots__ = ("_held", "_model")

    def __init__(self, public_model: str, classify: Callable[[int, bytes], Classified]) -> None:
        super().__init__(classify)
        # `message_start` and pings are held until content follows (see AnthropicToOpenAIStream).
        self._held: list[bytes] | None = []
        self._model = public_model

    def feed(self, data: bytes) -> bytes:
        out = self._held if self._held is not None else []
        for name, payload, raw in self._events.feed(data):
            if self._held is not None and name not in (b"message_start", b"ping", b"error"):
                self._held = None
            if name == b"ping" and self._held is not None:
                self._held.append(raw)
                continue
            # Only four event kinds need reading; deltas go through as the bytes they came in.
            if name == b"content_block_delta":
                self.chunks += 1
            if name not in (b"message_start", b"message_delta", b"message_stop", b"error"):
                out.append(raw)
                continue
            try:
                ev = json.loads(payload)
            except ValueError:
                out.append(raw)
                continue
            if name == b"message_start":
                msg = ev.get("message") or {}
                merge_usage(self._usage, msg.get("usage"))
                msg["model"] = self._model
                out.append(b"event: message_start\ndata: " + compact_json(ev) + b"\n\n")
                continue
            if name == b"message_delta":
                merge_usage(self._usage, ev.get("usage"))
            elif name == b"message_stop":
                self.done = True
            else:
                self._error(ev, payload)
                continue
            out.append(raw)
        if self._held is not None:
            return b""
        return b"".join(out)

    def finish(self) -> bytes:
        held, self._held = self._held, None
        return b"".join(held or ())


class AnthropicAdapter:
    native_ingresses: frozenset[Ingress] = frozenset({"anthropic"})
    endpoints: frozenset[Endpoint] = frozenset({"chat"})

    def __init__(self, name: str, config: AnthropicProvider) -> None:
        self.name = name
        self.config = config
        base = (config.base_url or "https://api.anthropic.com/v1").rstrip("/")
        # The Anthropic SDKs take the host root (`https://api.anthropic.com`); our base_url
        # convention, like OpenAI's, ends in `/v1`. Accept both.
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self._headers = {"content-type": "application/json",
                         "anthropic-version": config.anthropic_version, **config.headers}
        if config.api_key:
            self._headers["x-api-key"] = config.api_key
        self._default_max = config.default_max_tokens
        self._secrets = tuple(s for s in (config.api_key,) if s)

    def build_request(self, call: Call, target: Target, native: bool) -> UpstreamRequest:
        if call.endpoint != "chat":
            raise InvalidRequest(
                f"Model {call.model!r} is served by Anthropic, which has no /v1/{call.endpoint} "
                "endpoint; use /v1/chat/completions or /v1/messages.", param="model")
        if native and call.native_body is not None:
            body = dict(call.native_body)
            body["model"] = target.upstream_model
        else:
            body = to_messages_request(call.body, target.upstream_model, self._default_max)
        return UpstreamRequest(self._url, compact_json(body), self._headers_for(call))

    def _headers_for(self, call: Call) -> dict[str, str]:
        extra = {h: call.headers[h] for h in _FORWARDED if h in call.headers}
        return {**self._headers, **extra} if extra else self._headers

    def token_count_request(self, call: Call, target: Target) -> UpstreamRequest | None:
        """`POST /v1/messages/count_tokens` (https://docs.anthropic.com/en/api/messages-count-tokens)
        for a client of the same endpoint: its body, `model` the deployment's. The reply is
        `{"input_tokens": N}`. None for another format: the gateway counts that itself."""
        if call.ingress != "anthropic" or call.native_body is None:
            return None
        body = {**call.native_body, "model": target.upstream_model}
        return UpstreamRequest(self._url + "/count_tokens", compact_json(body),
                               self._headers_for(call))

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply:
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            raise UpstreamError(f"{self.name} returned a reply that is not a JSON Message")
        usage = usage_of(msg.get("usage"))
        if native:
            return Reply(ModelRename(target.upstream_model, call.model)(body), usage)
        return Reply(compact_json(chat_completion(msg, call.model, usage)), usage)

    def stream(self, call: Call, target: Target,
               native: bool) -> AnthropicToOpenAIStream | NativeStream:
        if native:
            return NativeStream(call.model, self._classify_body)
        return AnthropicToOpenAIStream(call.model, call.client_include_usage, self._classify_body)

    def _classify_body(self, status: int, body: bytes) -> Classified:
        return self.classify(status, body, {})

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Classified:
        etype, message = error_fields(body)
        message = client_message(message, self._secrets, status)
        # 529 overloaded_error, 500 api_error, 504 timeout_error: another deployment may serve.
        kind = error_kind(status, message.lower(), _CONTEXT_MARKERS)
        code = "context_length_exceeded" if kind is ErrorKind.CONTEXT_LENGTH else etype
        return Classified(kind, status, message, code, etype, None, parse_retry_after(headers))


def error_fields(body: bytes) -> tuple[str | None, str]:
    """`{"type": "error", "error": {"type", "message"}}` → (type, message)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None, body_text(body)
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return err.get("type"), str(err.get("message") or "")
    return None, body_text(body)
