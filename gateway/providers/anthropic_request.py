"""An OpenAI chat completions request → an Anthropic Messages request
(https://docs.anthropic.com/en/api/messages), refused with a 400 naming the field where
Anthropic has no counterpart."""

from __future__ import annotations

from typing import Any

from gateway.providers.openai_shape import (
    chosen_function,
    content_parts,
    data_url,
    each_message,
    function_tools,
    image_url,
    invalid,
    max_output_tokens,
    stop_sequences,
    tool_call,
)


def _image(url: str, param: str) -> dict[str, Any]:
    data = data_url(url, param)
    if data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": data[0],
                                            "data": data[1]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid("image_url.url must be an http(s) URL or a base64 data URL", param)


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """OpenAI message content (a string or parts) → Anthropic content blocks, empty text dropped
    (Anthropic rejects empty text blocks)."""
    out: list[dict[str, Any]] = []
    for p, kind, part in content_parts(content, param):
        if kind in ("text", "refusal"):
            text = part.get(kind) or ""
            if text:
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            out.append(_image(image_url(part), p))
        elif kind == "file" and isinstance(part.get("file"), dict) \
                and str(part["file"].get("file_data", "")).startswith("data:application/pdf;"):
            data = part["file"]["file_data"].partition(",")[2]
            src = {"type": "base64", "media_type": "application/pdf", "data": data}
            out.append({"type": "document", "source": src})
        else:
            raise invalid(f"content part type {kind!r} is not supported by Anthropic models", p)
    return out


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    name, args = tool_call(call, param)
    return {"type": "tool_use", "id": call.get("id") or "", "name": name, "input": args}


def _tool_result(m: dict[str, Any], param: str) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.get("tool_call_id")}
    content = m.get("content")
    if isinstance(content, str):
        if content:
            result["content"] = content
    elif content:
        result["content"] = _blocks(content, f"{param}.content")
    return result


def _turns(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages → (system texts, Anthropic turns). Consecutive turns of one role are merged
    — Anthropic wants user/assistant turns alternating, and `tool` results ride in a user turn —
    with tool_result blocks first in a user turn, as Anthropic requires."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for p, role, m in each_message(messages):
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
            blocks, arole = [_tool_result(m, p)], "user"
        else:
            raise invalid(f"role {role!r} is not supported by Anthropic models", f"{p}.role")
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


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        return {"type": "tool", "name": chosen_function(choice)}
    return None


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = function_tools(body, "Anthropic")
    if tools:
        decls = []
        for fn in tools:
            decl: dict[str, Any] = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            decl["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
            decls.append(decl)
        out["tools"] = decls
    tc = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and tools and (tc or {}).get("type") != "none":
        tc = {**(tc or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tc is not None and tools:
        out["tool_choice"] = tc
    return out


def to_messages_request(body: dict[str, Any], model: str,
                        default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat completions request → an Anthropic Messages request."""
    if (body.get("n") or 1) != 1:
        raise invalid("Anthropic models return one choice; n must be 1", "n")
    system, turns = _turns(body.get("messages"))
    out: dict[str, Any] = {"model": model}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns
    out["max_tokens"] = max_output_tokens(body) or default_max_tokens
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = stop_sequences(stop)
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
