"""A Responses API request → the OpenAI chat completions request it means, for every backend
that does not speak Responses itself (Anthropic, Gemini, chat-only OpenAI-compatible servers,
`local_backend`); their adapters take it from there as they take any chat request.

`untranslatable` names what only a native Responses backend can serve (built-in tools, hosted
state, file ids); `to_chat_request` refuses the same things, and malformed input, with a 400
naming the parameter in OpenAI's `input[2].content[0].image_url` style.
Reference: https://platform.openai.com/docs/api-reference/responses/create
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest

# Item types the translation carries; `reasoning` is read and dropped (only the model that wrote
# it could use it, and its encrypted form is opaque).
_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_NATIVE = ("which only a backend serving the Responses API natively can carry; model {model!r} "
           "is served here by translation to chat completions. Remove it, or use a model whose "
           "backend serves the Responses API")


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                          code="missing_required_parameter")


def _native(body: dict[str, Any], param: str, what: str) -> str:
    return f"{param}: {what}, " + _NATIVE.format(model=body.get("model")) + "."


# ---- the request's input ------------------------------------------------------------------------


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as Responses items: a string is one user message, an item with a
    `role` and no `type` is a message; everything else is kept as sent."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": raw}]}]
    out = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and "type" not in item and "role" in item:
            item = {"type": "message", **item}
        out.append(item)
    return out


def _kind(item: dict[str, Any]) -> Any:
    return item.get("type") or ("message" if "role" in item else None)


def _part_reason(body: dict[str, Any], role: Any, part: Any, param: str) -> str | None:
    """Why a chat message cannot carry this content part, or None."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _TEXT_PARTS or (kind == "refusal" and role == "assistant"):
        return None
    if role in ("system", "developer", "assistant"):
        return _native(body, f"{param}.type", f"a {role} message with {kind!r} content")
    if kind == "input_image" and part.get("file_id") and not part.get("image_url"):
        return _native(body, f"{param}.file_id", "an image given by file id")
    if kind == "input_file" and not part.get("file_data"):
        return _native(body, param, "a file given by file id or URL rather than file_data")
    if kind in ("input_image", "input_file"):
        return None
    return _native(body, f"{param}.type", f"content of type {kind!r}")


def _item_reason(body: dict[str, Any], item: Any, param: str) -> str | None:
    """Why a chat request cannot carry this input item, or None."""
    if not isinstance(item, dict):
        return None  # malformed: to_chat_request's 400
    kind = _kind(item)
    if kind not in _ITEMS:
        what = f"an item of type {kind!r}" if kind else "an item reference"
        return _native(body, f"{param}.type" if kind else param, what)
    if kind == "function_call_output" and not item.get("call_id"):
        return _native(body, f"{param}.call_id", "a function_call_output without call_id")
    content = item.get("output") if kind == "function_call_output" else item.get("content")
    if kind in ("message", "function_call_output") and isinstance(content, list):
        role = item.get("role") if kind == "message" else "tool"
        key = "output" if kind == "function_call_output" else "content"
        for j, part in enumerate(content):
            reason = _part_reason(body, role, part, f"{param}.{key}[{j}]")
            if reason:
                return reason
    return None


# The members `untranslatable` looks at besides a list `input`: a request with none of them
# and a string `input` (most requests) is translatable at a glance, one set operation.
_LOOKED_AT = frozenset({"background", "prompt", "conversation", "tools", "tool_choice"})


def untranslatable(body: dict[str, Any]) -> str | None:
    """Why a chat backend cannot serve this request — a sentence naming the field — or None
    when the translation carries everything it asks for."""
    if not isinstance(body.get("input"), list) and _LOOKED_AT.isdisjoint(body):
        return None
    if body.get("background") is True:
        return _native(body, "background", "a background response")
    for key, what in (("prompt", "a stored prompt template"),
                      ("conversation", "an OpenAI-hosted conversation object (previous_response_id "
                                       "works on every backend)")):
        if body.get(key) is not None:
            return _native(body, key, what)
    for i, tool in enumerate(body.get("tools") or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            return _native(body, f"tools[{i}].type", f"the built-in tool {kind!r}")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in ("function", "allowed_tools"):
        return _native(body, "tool_choice.type", f"a choice of the built-in tool "
                                                 f"{choice.get('type')!r}")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        for j, t in enumerate(choice.get("tools") or []):
            if not isinstance(t, dict) or t.get("type") != "function":
                return _native(body, f"tool_choice.tools[{j}].type", "an allowed built-in tool")
    raw = body.get("input")
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            reason = _item_reason(body, item, f"input[{i}]")
            if reason:
                return reason
    return None


# ---- items → chat messages ----------------------------------------------------------------------


def _text(part: dict[str, Any], param: str) -> str:
    text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
    if not isinstance(text, str):
        raise _missing(f"{param}.text")
    return text


def _chat_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    """A user message's (or tool output's) Responses content part → chat's."""
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": _text(part, param)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _missing(f"{param}.image_url")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    # input_file with file_data (checked by _part_reason): chat's file part takes the same.
    name = part.get("filename")
    return {"type": "file", "file": {"filename": name if isinstance(name, str) and name
                                     else "file", "file_data": part["file_data"]}}


def _parts(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"Invalid value for '{param}': expected a string or a list of content "
                   "parts.", param)
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad(f"Invalid value for '{param}[{j}]': expected a content part object.",
                       f"{param}[{j}]")
        parts.append(_chat_part(part, f"{param}[{j}]"))
    return parts


def _compact(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part is sent as a plain string: every chat backend takes that form."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _joined(content: Any, param: str) -> str:
    """System and assistant content as one string (text parts only, checked before)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"Invalid value for '{param}': expected a string or a list of content "
                   "parts.", param)
    return "".join(_text(p, f"{param}[{j}]") for j, p in enumerate(content)
                   if isinstance(p, dict))


def _string(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (key != "arguments" and not value):
        raise _missing(f"{param}.{key}")
    return value


class _Messages:
    """Builds the chat `messages` list item by item: consecutive function calls become one
    assistant message's `tool_calls` (as the model emitted them), and images returned by tools —
    which chat's tool messages cannot carry — follow the run of tool messages as a user
    message, so every tool message still directly follows its assistant message."""

    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []
        self._calls: list[dict[str, Any]] | None = None  # the open assistant's tool_calls
        self._tool_images: list[dict[str, Any]] = []

    def _flush_images(self) -> None:
        if self._tool_images:
            self.out.append({"role": "user", "content": self._tool_images})
            self._tool_images = []

    def add(self, item: dict[str, Any], param: str) -> None:
        kind = _kind(item)
        if kind == "reasoning":
            return  # dropped without ending the model turn it sits in
        if kind != "function_call_output":
            self._flush_images()
        if kind == "function_call":
            self._function_call(item, param)
            return
        self._calls = None
        if kind == "message":
            self._message(item, param)
        elif kind == "function_call_output":
            self._function_output(item, param)

    def _message(self, item: dict[str, Any], param: str) -> None:
        role = item.get("role")
        content = item.get("content")
        if content is None:
            raise _missing(f"{param}.content")
        if role == "assistant":
            msg: dict[str, Any] = {"role": "assistant",
                                   "content": _joined(content, f"{param}.content")}
            self.out.append(msg)
            # Calls right after this message are the same model turn.
            self._calls = msg.setdefault("tool_calls", [])
            return
        if role in ("system", "developer"):
            # `developer` is OpenAI's newer name for `system`; chat templates of self-hosted
            # models know only `system`, which every chat backend takes.
            self.out.append({"role": "system", "content": _joined(content, f"{param}.content")})
        elif role == "user":
            self.out.append({"role": "user",
                             "content": _compact(_parts(content, f"{param}.content"))})
        else:
            raise _bad(f"Invalid value for '{param}.role': expected 'user', 'assistant', "
                       f"'system' or 'developer' (got {role!r}).", f"{param}.role")

    def _function_call(self, item: dict[str, Any], param: str) -> None:
        call = {"id": _string(item, "call_id", param), "type": "function",
                "function": {"name": _string(item, "name", param),
                             "arguments": _string(item, "arguments", param)}}
        if self._calls is None:
            msg: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
            self.out.append(msg)
            self._calls = msg["tool_calls"]
        self._calls.append(call)

    def _function_output(self, item: dict[str, Any], param: str) -> None:
        output = item.get("output")
        if output is None:
            raise _missing(f"{param}.output")
        parts = _parts(output, f"{param}.output")
        texts = [p for p in parts if p["type"] == "text"]
        self._tool_images += [p for p in parts if p["type"] != "text"]
        content = output if isinstance(output, str) else "".join(p["text"] for p in texts)
        self.out.append({"role": "tool", "tool_call_id": _string(item, "call_id", param),
                         "content": content})

    def done(self) -> list[dict[str, Any]]:
        self._flush_images()
        for msg in self.out:  # an assistant message no calls followed keeps chat's plain form
            if msg.get("tool_calls") == []:
                del msg["tool_calls"]
        return self.out


def _replayable(item: Any) -> dict[str, Any] | None:
    """A stored item as it is replayed to a chat backend, or None to leave it out. A turn
    served natively may hold built-in tool calls (web_search_call…), whose results the model
    already put into its message, and content chat cannot carry (images by file id): they are
    left out so that the conversation can still continue here after a fallback."""
    if not isinstance(item, dict) or _item_reason({}, item, "") is None:
        return item if isinstance(item, dict) else None
    kind = _kind(item)
    if kind not in _ITEMS or (kind == "function_call_output" and not item.get("call_id")):
        return None
    key = "output" if kind == "function_call_output" else "content"
    role = item.get("role") if kind == "message" else "tool"
    kept = [p for p in item[key] if _part_reason({}, role, p, "") is None]
    return {**item, key: kept} if kept or kind == "function_call_output" else None


# ---- the rest of the request --------------------------------------------------------------------


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if not tools:
        return
    chat: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        fn: dict[str, Any] = {"name": _string(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        chat.append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # Chat backends have no allowed-tools list: offering only those tools means the same.
        allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
        chat = [t for t in chat if t["function"]["name"] in allowed]
        choice = choice.get("mode") or "auto"
    if not chat:
        return
    out["tools"] = chat
    if body.get("parallel_tool_calls") is not None:
        # OpenAI's chat API refuses parallel_tool_calls without tools.
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if isinstance(choice, dict):
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _missing("tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
    elif choice is not None:
        raise _bad(f"Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or "
                   f"a function (got {choice!r}).", "tool_choice")


def _response_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    fmt = (body.get("text") or {}).get("format")
    if not isinstance(fmt, dict):
        return
    kind = fmt.get("type")
    if kind == "json_schema":
        schema: dict[str, Any] = {"name": _string(fmt, "name", "text.format")}
        if not isinstance(fmt.get("schema"), dict):
            raise _missing("text.format.schema")
        for key in ("description", "schema", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise _bad(f"Invalid value for 'text.format.type': expected 'text', 'json_schema' or "
                   f"'json_object' (got {kind!r}).", "text.format.type")


def to_chat_request(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions body for a (checked, translatable) Responses request. `history` is
    the earlier turns' items, oldest first, rebuilt from the store."""
    reason = untranslatable(body)
    if reason is not None:
        raise InvalidRequest(reason, param=reason.partition(":")[0], code="unsupported_value")
    messages = _Messages()
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.out.append({"role": "system", "content": instructions})
    try:
        for item in history:
            kept = _replayable(item)
            if kept is not None:
                messages.add(kept, "previous_response_id")
    except InvalidRequest as e:  # stored items were checked once: this is not the client's
        raise InvalidRequest("The conversation before previous_response_id cannot be replayed "
                             f"to model {body.get('model')!r}: {e.message}",
                             param="previous_response_id") from None
    for i, item in enumerate(input_items(body)):
        if not isinstance(item, dict):
            raise _bad(f"Invalid value for 'input[{i}]': expected an item object.", f"input[{i}]")
        messages.add(item, f"input[{i}]")
    out: dict[str, Any] = {"model": body["model"], "messages": messages.done()}
    if not out["messages"]:
        raise _missing("input")
    _tools(body, out)
    _response_format(body, out)
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    effort = (body.get("reasoning") or {}).get("effort")
    if isinstance(effort, str):
        out["reasoning_effort"] = effort
    if body.get("stream") is True:
        # The codec needs the usage: Responses reports it in `response.completed`.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
