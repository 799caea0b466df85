"""The OpenAI chat shapes that every translating adapter (Anthropic, Gemini) reads and writes.

Reading: a chat completions request's messages, content parts, tool calls, tools and limits,
with the checks and 400 messages that do not depend on the provider. Writing: the assistant
message and the `chat.completion` object a provider's reply becomes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from gateway.accounting.usage import Usage
from gateway.errors import InvalidRequest

# ---- reading a request ------------------------------------------------------------------------


def invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def each_message(messages: Any) -> Iterator[tuple[str, str | None, Any]]:
    """(param, role, message) of each entry of `messages`, which must be a non-empty list."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        yield f"messages[{i}]", m.get("role") if isinstance(m, dict) else None, m


def content_parts(content: Any, param: str) -> list[tuple[str, str | None, Any]]:
    """(param, type, part) of each part of a message's `content`; a string is one text part."""
    if content is None:
        return []
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    elif not isinstance(content, list):
        raise invalid("content must be a string or a list of content parts", param)
    return [(f"{param}[{j}]", part.get("type") if isinstance(part, dict) else None, part)
            for j, part in enumerate(content)]


def image_url(part: dict[str, Any]) -> str:
    img = part.get("image_url")
    return img.get("url", "") if isinstance(img, dict) else str(img or "")


def data_url(url: str, param: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL; None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, _, data = url.partition(",")
    if ";base64" not in head or not data:
        raise invalid("image data URLs must be base64 (data:image/png;base64,…)", param)
    return head[5:].split(";")[0], data


def tool_call(call: Any, param: str) -> tuple[str, dict[str, Any]]:
    """An assistant message's `tool_calls` entry → (function name, arguments as an object)."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise invalid("tool_calls entries need function.name", param)
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise invalid("function.arguments must be a JSON object", f"{param}.function.arguments")
    return fn["name"], args


def function_tools(body: dict[str, Any], provider: str) -> list[dict[str, Any]]:
    """The `function` object of each of the request's tools; other tool types are a 400."""
    out = []
    for i, t in enumerate(body.get("tools") or []):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise invalid(f"only function tools are supported by {provider} models",
                          f"tools[{i}]")
        out.append(fn)
    return out


def chosen_function(choice: dict[str, Any]) -> str:
    """The function a `tool_choice` object names."""
    name = (choice.get("function") or {}).get("name")
    if not name:
        raise invalid("tool_choice must name a function", "tool_choice")
    return name


def max_output_tokens(body: dict[str, Any]) -> Any:
    # `max_tokens` is deprecated in favour of `max_completion_tokens`; clients send either.
    return body.get("max_completion_tokens") or body.get("max_tokens")


def stop_sequences(stop: Any) -> list[Any]:
    return [stop] if isinstance(stop, str) else list(stop)


# ---- writing a reply --------------------------------------------------------------------------


def assistant_message(texts: list[str], reasoning: list[str],
                      tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        # The field vLLM and DeepSeek use for reasoning text; the openai SDK keeps extra fields.
        message["reasoning_content"] = "".join(reasoning)
    return message


def completion(reply_id: str, public_model: str, choices: list[dict[str, Any]],
               usage: Usage | None) -> dict[str, Any]:
    """The `chat.completion` object around translated choices."""
    out: dict[str, Any] = {
        "id": reply_id, "object": "chat.completion", "created": int(time.time()),
        "model": public_model, "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out
