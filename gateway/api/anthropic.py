"""The Anthropic-compatible ingress, `POST /v1/messages`: validate the body as Anthropic does and
turn it into an OpenAI-shaped `Call`, keeping the original for Anthropic backends (native mode).

Reference: https://docs.anthropic.com/en/api/messages
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from gateway.api.parse import parse_json_object
from gateway.call import Call
from gateway.errors import InvalidRequest
from gateway.ids import new_id

# Request headers never copied into `Call.headers` (credentials stay with authentication).
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "cookie",
                             "proxy-authorization"})


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _text(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{param}.text: Field required", f"{param}.text")
    return text


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64":
        url = f"data:{src.get('media_type')};base64,{src.get('data')}"
    elif isinstance(src, dict) and src.get("type") == "url" and src.get("url"):
        url = str(src["url"])
    else:
        raise _bad(f"{param}.source: an image source must be base64 or url", f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "text":
        return {"type": "text", "text": str(src.get("data") or "")}
    if isinstance(src, dict) and src.get("type") == "base64":
        return {"type": "file", "file": {
            "filename": block.get("title") or "document.pdf",
            "file_data": f"data:{src.get('media_type')};base64,{src.get('data')}"}}
    raise _bad(f"{param}.source: this gateway forwards base64 and text documents only "
               "to non-Anthropic models", f"{param}.source")


def _tool_result_text(content: Any, param: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's content → (text for the OpenAI tool message, image parts that OpenAI's
    tool messages cannot carry and so follow in a user message)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise _bad(f"{param}: must be a string or a list of blocks", param)
    texts, images = [], []
    for j, b in enumerate(content):
        if isinstance(b, dict) and b.get("type") == "text":
            texts.append(_text(b, f"{param}[{j}]"))
        elif isinstance(b, dict) and b.get("type") == "image":
            images.append(_image_part(b, f"{param}[{j}]"))
    return "".join(texts), images


def _message(m: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message → one or more OpenAI messages (tool results become `tool` ones)."""
    p = f"messages.{i}"
    if not isinstance(m, dict):
        raise _bad(f"{p}: Input should be an object", p)
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"{p}.role: Input should be 'user' or 'assistant'", f"{p}.role")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{p}.content: Input should be a string or a list of content blocks",
                   f"{p}.content")
    parts: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        bp = f"{p}.content.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(b, bp)})
        elif kind == "image":
            parts.append(_image_part(b, bp))
        elif kind == "document":
            parts.append(_document_part(b, bp))
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": b.get("id"), "type": "function", "function": {
                "name": b.get("name"),
                "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False)}})
        elif kind == "tool_result" and role == "user":
            text, images = _tool_result_text(b.get("content"), f"{bp}.content")
            tools.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": text})
            parts.extend(images)
        elif kind in ("thinking", "redacted_thinking"):
            continue  # only an Anthropic model can read its own thinking back
        else:
            raise _bad(f"{bp}.type: {kind!r} is not a content block this gateway can forward "
                       f"in a {role} message", f"{bp}.type")
    if role == "assistant":
        text = "".join(x["text"] for x in parts if x["type"] == "text")
        msg: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            msg["tool_calls"] = calls
        return [msg] if text or calls else []
    if parts and all(x["type"] == "text" for x in parts) and len(parts) == 1:
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}] if parts else tools


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad("system: Input should be a string or a list of text blocks", "system")
    parts = [{"type": "text", "text": _text(b, f"system.{j}")}
             for j, b in enumerate(system) if isinstance(b, dict)]
    return [{"role": "system", "content": parts}] if parts else []


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools: Input should be a list", "tools")
    fns = []
    for j, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"tools.{j}.name: Field required", f"tools.{j}.name")
        if t.get("type") not in (None, "custom"):
            continue  # server tools (web search, code execution) exist only on Anthropic
        fn: dict[str, Any] = {"name": t["name"]}
        if t.get("description"):
            fn["description"] = t["description"]
        fn["parameters"] = t.get("input_schema") or {"type": "object", "properties": {}}
        fns.append({"type": "function", "function": fn})
    if not fns:
        return
    out["tools"] = fns
    tc = body.get("tool_choice")
    if isinstance(tc, dict):
        kind = tc.get("type")
        if kind in ("auto", "none"):
            out["tool_choice"] = kind
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "tool" and tc.get("name"):
            out["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}}
        else:
            raise _bad("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
                       "tool_choice.type")
        if tc.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False


def to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """A validated Anthropic Messages request → the OpenAI chat completions request it means."""
    messages = _system(body.get("system"))
    for i, m in enumerate(body["messages"]):
        messages.extend(_message(m, i))
    out: dict[str, Any] = {"model": body["model"], "messages": messages,
                           "max_tokens": body["max_tokens"]}
    stop = body.get("stop_sequences")
    if stop:
        out["stop"] = list(stop)
    for key in ("temperature", "top_p"):
        if isinstance(body.get(key), int | float) and not isinstance(body.get(key), bool):
            out[key] = body[key]
    _tools(body, out)
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "output", "schema": fmt["schema"]}}
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    if body.get("stream") is True:
        # The codec needs the usage to put it in `message_delta`.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def validate(body: dict[str, Any]) -> None:
    """What Anthropic itself rejects with 400 invalid_request_error, in its words."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required", "model")
    mt = body.get("max_tokens")
    if mt is None:
        raise _bad("max_tokens: Field required", "max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise _bad("max_tokens: Input should be an integer greater than or equal to 1",
                   "max_tokens")
    msgs = body.get("messages")
    if msgs is None:
        raise _bad("messages: Field required", "messages")
    if not isinstance(msgs, list):
        raise _bad("messages: Input should be a valid list", "messages")
    if not msgs:
        raise _bad("messages: at least one message is required", "messages")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("stream: Input should be a valid boolean", "stream")
    stop = body.get("stop_sequences")
    if stop is not None and (not isinstance(stop, list)
                             or not all(isinstance(s, str) for s in stop)):
        raise _bad("stop_sequences: Input should be a list of strings", "stop_sequences")
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise _bad("metadata: Input should be an object", "metadata")


def _api_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _request_id(headers: Mapping[str, str]) -> str:
    rid = headers.get("x-request-id")
    if rid and len(rid) <= 128 and rid.isascii() and rid.isprintable():
        return rid
    return new_id()


def parse_messages_request(raw: bytes, headers: Mapping[str, str] | HTTPConnection) -> Call:
    """Bytes of a `/v1/messages` request → a `Call` (ingress "anthropic"). Raises InvalidRequest,
    which the route renders with the Anthropic codec's `error_body`. `headers` may be the
    request itself (its headers are read)."""
    if isinstance(headers, HTTPConnection):
        headers = headers.headers
    body = parse_json_object(raw)
    validate(body)
    openai_body = to_openai_request(body)
    stream = body.get("stream") is True
    user = openai_body.get("user")
    kept = {k.lower(): v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}
    return Call(
        endpoint="chat", model=body["model"], body=openai_body,
        # The OpenAI-shaped bytes: a pass-through adapter may send `raw` as is.
        raw=json.dumps(openai_body, ensure_ascii=False, separators=(",", ":")).encode(),
        stream=stream, request_id=_request_id(headers), api_key=_api_key(headers),
        client_include_usage=stream, ingress="anthropic", native_body=body, headers=kept,
        session=headers.get("x-session-id") or user,
    )
