"""The Anthropic-compatible ingress, `POST /v1/messages`: validate the body as Anthropic does and
turn it into an OpenAI-shaped `Call`, keeping the original for Anthropic backends (native mode).

Reference: https://docs.anthropic.com/en/api/messages
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from gateway.api.bodies import check_messages
from gateway.api.json_body import parse_json_object
from gateway.api.parse import client_request_id
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


def _string(obj: dict[str, Any], key: str, param: str) -> str:
    """`obj[key]`, which the translation copies into the OpenAI request, as a string; anything
    else would reach the backend as `None` or a Python repr."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"{param}.{key}: Input should be a valid string", f"{param}.{key}")
    return value


def _data_url(src: dict[str, Any], param: str) -> str:
    return (f"data:{_string(src, 'media_type', param)};base64,"
            f"{_string(src, 'data', param)}")


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64":
        url = _data_url(src, f"{param}.source")
    elif isinstance(src, dict) and src.get("type") == "url" and src.get("url"):
        url = str(src["url"])
    else:
        raise _bad(f"{param}.source: an image source must be base64 or url", f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "text":
        return {"type": "text", "text": _string(src, "data", f"{param}.source")}
    if isinstance(src, dict) and src.get("type") == "base64":
        title = block.get("title")
        return {"type": "file", "file": {
            "filename": title if isinstance(title, str) and title else "document.pdf",
            "file_data": _data_url(src, f"{param}.source")}}
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
            args = b.get("input")
            if args is not None and not isinstance(args, dict):
                raise _bad(f"{bp}.input: Input should be an object", f"{bp}.input")
            calls.append({"id": _string(b, "id", bp), "type": "function", "function": {
                "name": _string(b, "name", bp),
                "arguments": json.dumps(args or {}, ensure_ascii=False)}})
        elif kind == "tool_result" and role == "user":
            text, images = _tool_result_text(b.get("content"), f"{bp}.content")
            tools.append({"role": "tool", "tool_call_id": _string(b, "tool_use_id", bp),
                          "content": text})
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


def _api_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers an Anthropic backend may get (`anthropic-beta`…), lower-cased and
    without credentials, as `Call.headers` keeps them."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}


def parse_messages_request(raw: bytes, headers: Mapping[str, str] | HTTPConnection) -> Call:
    """Bytes of a `/v1/messages` request → a `Call` (ingress "anthropic"). Raises InvalidRequest,
    which the route renders with the Anthropic codec's `error_body`. `headers` may be the
    request itself (its headers are read)."""
    if isinstance(headers, HTTPConnection):
        headers = headers.headers
    body = parse_json_object(raw, anthropic_paths=True)
    check_messages(body)
    openai_body = to_openai_request(body)
    stream = body.get("stream") is True
    user = openai_body.get("user")
    kept = forwarded_headers(headers)
    return Call(
        endpoint="chat", model=body["model"], body=openai_body,
        # The OpenAI-shaped bytes: a pass-through adapter may send `raw` as is.
        raw=json.dumps(openai_body, ensure_ascii=False, separators=(",", ":")).encode(),
        stream=stream, request_id=new_id(), client_request_id=client_request_id(headers),
        api_key=_api_key(headers),
        client_include_usage=stream, ingress="anthropic", native_body=body, headers=kept,
        session=headers.get("x-session-id") or user,
    )
