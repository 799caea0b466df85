"""Anthropic Messages API (https://docs.anthropic.com/en/api/messages) ↔ OpenAI chat completions.

Non-native calls (the OpenAI ingress) are translated both ways, streams included; native calls
(the `/v1/messages` ingress) send the client's own body and pass the reply through, with only
`model` renamed to the public name and the usage read on the way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gateway.accounting.usage import Usage, from_anthropic
from gateway.call import Call, Ingress
from gateway.errors import InvalidRequest, UpstreamError
from gateway.policy.models import AnthropicProvider
from gateway.providers.base import Classified, ErrorKind, Reply, Target
from gateway.providers.openai_compat import ModelRename
from gateway.providers.scrub import scrub
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


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class SSEEvents:
    """Whole SSE events out of arbitrary byte splits: (event name, data payload, raw event)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        buf = self._buf + data if self._buf else data
        if b"\r\n" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 2:]
        out = []
        for raw in buf[:end].split(b"\n\n"):
            name, payload = b"", []
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    payload.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
            if payload or name:
                out.append((name, b"\n".join(payload), raw + b"\n\n"))
        return out


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _image(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0]
        if ";base64" not in head or not data:
            raise _bad("image data URLs must be base64 (data:image/png;base64,…)", param)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad("image_url.url must be an http(s) URL or a base64 data URL", param)


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """OpenAI message content (a string or parts) → Anthropic content blocks, empty text dropped
    (Anthropic rejects empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content parts", param)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind) or ""
            if text:
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            img = part.get("image_url")
            out.append(_image(img.get("url", "") if isinstance(img, dict) else str(img or ""), p))
        elif kind == "file" and isinstance(part.get("file"), dict) \
                and str(part["file"].get("file_data", "")).startswith("data:application/pdf;"):
            data = part["file"]["file_data"].partition(",")[2]
            src = {"type": "base64", "media_type": "application/pdf", "data": data}
            out.append({"type": "document", "source": src})
        else:
            raise _bad(f"content part type {kind!r} is not supported by Anthropic models", p)
    return out


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise _bad("tool_calls entries need function.name", param)
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise _bad("function.arguments must be a JSON object", f"{param}.function.arguments")
    return {"type": "tool_use", "id": call.get("id") or "", "name": fn["name"], "input": args}


def _turns(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages → (system texts, Anthropic turns). Consecutive turns of one role are merged
    — Anthropic wants user/assistant turns alternating, and `tool` results ride in a user turn —
    with tool_result blocks first in a user turn, as Anthropic requires."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _blocks(m.get("content"), f"{p}.content"))
            continue
        if role == "user":
            blocks, arole = _blocks(m.get("content"), f"{p}.content"), "user"
        elif role == "assistant":
            blocks, arole = _blocks(m.get("content"), f"{p}.content"), "assistant"
            blocks += [_tool_use(c, f"{p}.tool_calls[{j}]")
                       for j, c in enumerate(m.get("tool_calls") or [])]
        elif role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.get("tool_call_id")}
            content = m.get("content")
            if isinstance(content, str):
                if content:
                    result["content"] = content
            elif content:
                result["content"] = _blocks(content, f"{p}.content")
            blocks, arole = [result], "user"
        else:
            raise _bad(f"role {role!r} is not supported by Anthropic models", f"{p}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == arole:
            merged = turns[-1]["content"] + blocks
            merged.sort(key=lambda b: b["type"] != "tool_result")  # stable: results first
            turns[-1]["content"] = merged
        else:
            turns.append({"role": arole, "content": blocks})
    # A final assistant turn is a prefill, and Anthropic rejects one ending in whitespace.
    if turns and turns[-1]["role"] == "assistant":
        last = turns[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                turns[-1]["content"].pop()
                if not turns[-1]["content"]:
                    turns.pop()
    for t in turns:  # the compact form for plain text turns
        c = t["content"]
        if len(c) == 1 and c[0]["type"] == "text" and len(c[0]) == 2:
            t["content"] = c[0]["text"]
    return system, turns


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools:
        decls = []
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise _bad("only function tools are supported by Anthropic models", f"tools[{i}]")
            decl: dict[str, Any] = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            decl["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
            decls.append(decl)
        out["tools"] = decls
    choice = body.get("tool_choice")
    tc: dict[str, Any] | None = None
    if choice in ("auto", "none"):
        tc = {"type": choice}
    elif choice == "required":
        tc = {"type": "any"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise _bad("tool_choice must name a function", "tool_choice")
        tc = {"type": "tool", "name": name}
    if body.get("parallel_tool_calls") is False and tools and (tc or {}).get("type") != "none":
        tc = {**(tc or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tc is not None and tools:
        out["tool_choice"] = tc
    return out


def to_messages_request(body: dict[str, Any], model: str,
                        default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat completions request → an Anthropic Messages request."""
    if (body.get("n") or 1) != 1:
        raise _bad("Anthropic models return one choice; n must be 1", "n")
    system, turns = _turns(body.get("messages"))
    out: dict[str, Any] = {"model": model}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns
    out["max_tokens"] = (body.get("max_completion_tokens") or body.get("max_tokens")
                         or default_max_tokens)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("temperature"), int | float):
        # OpenAI's range is 0–2, Anthropic's 0–1: above 1 means "as random as it goes".
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if isinstance(body.get("top_p"), int | float):
        out["top_p"] = body["top_p"]
    out.update(_tools(body))
    fmt = body.get("response_format")
    schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
    if isinstance(schema, dict):  # structured outputs; json_object has no counterpart
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    return out


def retry_after(headers: Mapping[str, str]) -> float | None:
    v = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(v) if v else None
    except ValueError:
        return None


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
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        # The field vLLM and DeepSeek use for reasoning text; the openai SDK keeps extra fields.
        message["reasoning_content"] = "".join(thinking)
    out: dict[str, Any] = {
        "id": msg.get("id") or "", "object": "chat.completion", "created": int(time.time()),
        "model": public_model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(msg.get("stop_reason") or "", "stop")}],
    }
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out


class AnthropicToOpenAIStream:
    """Anthropic stream events → OpenAI `chat.completion.chunk` SSE, usage read on the way."""

    __slots__ = ("_classify", "_created", "_events", "_id", "_include_usage", "_model",
                 "_pending", "_tools", "_usage", "chunks", "done", "error")

    def __init__(self, public_model: str, include_usage: bool,
                 classify: Callable[[int, bytes], Classified]) -> None:
        self._events = SSEEvents()
        self._model = public_model
        self._include_usage = include_usage
        self._classify = classify
        self._id = ""
        self._created = int(time.time())
        # Anthropic content-block index → OpenAI tool_calls index.
        self._tools: dict[int, int] = {}
        self._usage: dict[str, Any] = {}
        # The role chunk of `message_start`, held until content follows: Anthropic often sends
        # `message_start` then an `overloaded_error`, and while nothing has reached the client
        # the proxy can still fall back to another deployment.
        self._pending = b""
        # Content deltas forwarded: the proxy's output estimate should usage never arrive.
        self.chunks = 0
        self.done = False
        self.error: Classified | None = None

    @property
    def usage(self) -> Usage | None:
        return usage_of(self._usage) if self._usage else None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + _json({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }) + b"\n\n"

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
            self._id = msg.get("id") or ""
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
            err = ev.get("error") or {}
            self.error = self._classify(ERROR_STATUS.get(str(err.get("type")), 500), _json(ev))
        return None

    def finish(self) -> bytes:
        tail, self._pending = self._pending, b""
        usage = self.usage
        if self._include_usage and usage is not None:
            tail += b"data: " + _json({
                "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": [], "usage": usage.to_openai(),
            }) + b"\n\n"
        return tail + b"data: [DONE]\n\n"


class NativeStream:
    """Anthropic events passed through to an Anthropic client: `model` renamed, usage read."""

    __slots__ = ("_classify", "_events", "_held", "_model", "_usage", "chunks", "done", "error")

    def __init__(self, public_model: str, classify: Callable[[int, bytes], Classified]) -> None:
        self._events = SSEEvents()
        # `message_start` and pings are held until content follows (see AnthropicToOpenAIStream).
        self._held: list[bytes] | None = []
        self._model = public_model
        self._classify = classify
        self._usage: dict[str, Any] = {}
        self.chunks = 0
        self.done = False
        self.error: Classified | None = None

    @property
    def usage(self) -> Usage | None:
        return usage_of(self._usage) if self._usage else None

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
                out.append(b"event: message_start\ndata: " + _json(ev) + b"\n\n")
                continue
            if name == b"message_delta":
                merge_usage(self._usage, ev.get("usage"))
            elif name == b"message_stop":
                self.done = True
            else:
                err = ev.get("error") or {}
                self.error = self._classify(ERROR_STATUS.get(str(err.get("type")), 500), payload)
                continue
            out.append(raw)
        if self._held is not None:
            return b""
        return b"".join(out)

    def finish(self) -> bytes:
        held, self._held = self._held, None
        return b"".join(held or ())


class AnthropicAdapter:
    native_ingress: Ingress = "anthropic"

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
        headers = self._headers
        extra = {h: call.headers[h] for h in _FORWARDED if h in call.headers}
        if extra:
            headers = {**headers, **extra}
        return UpstreamRequest(self._url, _json(body), headers)

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
        return Reply(_json(chat_completion(msg, call.model, usage)), usage)

    def stream(self, call: Call, target: Target,
               native: bool) -> AnthropicToOpenAIStream | NativeStream:
        if native:
            return NativeStream(call.model, self._classify_body)
        return AnthropicToOpenAIStream(call.model, call.client_include_usage, self._classify_body)

    def _classify_body(self, status: int, body: bytes) -> Classified:
        return self.classify(status, body, {})

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Classified:
        etype, message = error_fields(body)
        message = scrub(message, self._secrets) or f"upstream returned HTTP {status}"
        code = etype
        low = message.lower()
        if status in (400, 413) and any(m in low for m in _CONTEXT_MARKERS):
            kind, code = ErrorKind.CONTEXT_LENGTH, "context_length_exceeded"
        elif status in (408, 409, 429) or status >= 500:
            # 529 overloaded_error, 500 api_error, 504 timeout_error: another deployment may serve.
            kind = ErrorKind.RETRYABLE
        elif status in (401, 403):
            kind = ErrorKind.CONFIG
        else:
            kind = ErrorKind.CLIENT
        return Classified(kind, status, message, code, etype, None, retry_after(headers))


def error_fields(body: bytes) -> tuple[str | None, str]:
    """`{"type": "error", "error": {"type", "message"}}` → (type, message)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None, body[:500].decode("utf-8", "replace").strip()
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return err.get("type"), str(err.get("message") or "")
    return None, body[:500].decode("utf-8", "replace").strip()
