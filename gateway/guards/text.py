"""The text a guard checks in a request or reply body, and the same body with it rewritten.

One walker serves every wire format the gateway sees (OpenAI chat/completions/embeddings,
Anthropic Messages, the Responses API, and their replies): text lives under a few keys
(`content`, `text`, `input`, `system`, `instructions`, `prompt`, `arguments`…), and inside
those, every string except structural ones (`type`, `role`, ids, image URLs and base64 data).
A finding never spans two strings: each message part is checked on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Keys whose value is text to check (a string, or parts/items holding strings).
TEXT_KEYS = frozenset({
    "content", "text", "prompt", "input", "system", "instructions", "arguments", "query",
    "documents", "text_1", "text_2", "output", "message", "delta", "refusal", "thinking",
})
# Inside text: strings that are structure, not words (and base64 payloads, costly to scan).
STRUCTURAL = frozenset({
    "type", "role", "id", "model", "name", "call_id", "tool_call_id", "tool_use_id",
    "image_url", "url", "detail", "format", "status", "object", "finish_reason",
    "stop_reason", "media_type", "data", "file_id", "file_data", "cache_control",
    "signature", "encrypted_content", "item_id", "response_id", "annotations", "logprobs",
})


def texts(obj: Any) -> list[str]:
    """Every text string in a request or reply body, in document order."""
    out: list[str] = []
    fast = _chat_texts(obj, out) if isinstance(obj, dict) else False
    if not fast:
        out.clear()
        _collect(obj, False, out)
    return out


def _chat_texts(body: dict[str, Any], out: list[str]) -> bool:
    """The common case on the request path, without the walk: a chat request whose messages
    are all `{role, content: str}` and with no other text key. False: walk it."""
    for k in body:
        if k in TEXT_KEYS:
            return False
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    for m in messages:
        if type(m) is not dict or len(m) != 2 or type(m.get("content")) is not str \
                or "role" not in m:
            return False
        if m["content"]:
            out.append(m["content"])
    return True


def _collect(obj: Any, inside: bool, out: list[str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in STRUCTURAL:
                continue
            if isinstance(v, str):
                if (inside or k in TEXT_KEYS) and v:
                    out.append(v)
            elif isinstance(v, dict | list):
                _collect(v, inside or k in TEXT_KEYS, out)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, str):
                if inside and v:
                    out.append(v)
            elif isinstance(v, dict | list):
                _collect(v, inside, out)


def rewrite(obj: Any, fn: Callable[[str], str]) -> Any:
    """`obj` with `fn` applied to each text string. Containers on the way to a changed string
    are copied; everything else (and `obj` itself, when nothing changed) is shared."""
    return _rewrite(obj, False, fn)


def _rewrite(obj: Any, inside: bool, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, dict):
        changed: dict[str, Any] | None = None
        for k, v in obj.items():
            if k in STRUCTURAL:
                continue
            if isinstance(v, str):
                new: Any = fn(v) if (inside or k in TEXT_KEYS) and v else v
            elif isinstance(v, dict | list):
                new = _rewrite(v, inside or k in TEXT_KEYS, fn)
            else:
                continue
            if new is not v:
                if changed is None:
                    changed = dict(obj)
                changed[k] = new
        return obj if changed is None else changed
    if isinstance(obj, list):
        items: list[Any] | None = None
        for i, v in enumerate(obj):
            if isinstance(v, str):
                new = fn(v) if inside and v else v
            elif isinstance(v, dict | list):
                new = _rewrite(v, inside, fn)
            else:
                continue
            if new is not v:
                if items is None:
                    items = list(obj)
                items[i] = new
        return obj if items is None else items
    return obj
