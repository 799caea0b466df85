"""An OpenAI request → a Gemini request (https://ai.google.dev/api/generate-content): chat
completions to a GenerateContentRequest, embeddings to batchEmbedContents, refused with a 400
naming the field where Gemini has no counterpart."""

from __future__ import annotations

import json
import mimetypes
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


def _media(url: str, param: str) -> dict[str, Any]:
    data = data_url(url, param)
    if data is not None:
        return {"inlineData": {"mimeType": data[0], "data": data[1]}}
    if url.startswith(("http://", "https://", "gs://")):
        mime = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise invalid("image_url.url must be an http(s) URL or a base64 data URL", param)


def _parts(content: Any, param: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p, kind, part in content_parts(content, param):
        if kind in ("text", "refusal"):
            if part.get(kind):
                out.append({"text": part[kind]})
        elif kind == "image_url":
            out.append(_media(image_url(part), p))
        elif kind == "file" and isinstance(part.get("file"), dict) \
                and str(part["file"].get("file_data", "")).startswith("data:"):
            out.append(_media(part["file"]["file_data"], p))
        else:
            raise invalid(f"content part type {kind!r} is not supported by Gemini models", p)
    return out


def _function_call(call: Any, param: str) -> tuple[str, dict[str, Any]]:
    name, args = tool_call(call, param)
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    # Gemini 3 wants the thought signature of a function call back; it travels to the client
    # as `extra_content.google.thought_signature`, as on Google's own OpenAI-compatible API.
    sig = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if sig:
        part["thoughtSignature"] = sig
    return name, part


def _function_response(content: Any) -> dict[str, Any]:
    """`functionResponse.response` must be a JSON object; other output goes under `output`."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if isinstance(content, str):
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = content
        return parsed if isinstance(parsed, dict) else {"output": parsed}
    return {"output": content}


def _contents(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (system parts, contents), consecutive same-role turns merged."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id → function name: functionResponse needs the name
    for p, role, m in each_message(messages):
        if role in ("system", "developer"):
            system.extend(_parts(m.get("content"), f"{p}.content"))
            continue
        if role == "user":
            parts, grole = _parts(m.get("content"), f"{p}.content"), "user"
        elif role == "assistant":
            parts, grole = _parts(m.get("content"), f"{p}.content"), "model"
            for j, c in enumerate(m.get("tool_calls") or []):
                name, part = _function_call(c, f"{p}.tool_calls[{j}]")
                names[str(c.get("id"))] = name
                parts.append(part)
        elif role == "tool":
            name = names.get(str(m.get("tool_call_id"))) or m.get("name")
            if not name:
                raise invalid("tool message answers no earlier tool call (unknown tool_call_id)",
                              f"{p}.tool_call_id")
            parts = [{"functionResponse": {"name": name,
                                           "response": _function_response(m.get("content"))}}]
            grole = "user"
        else:
            raise invalid(f"role {role!r} is not supported by Gemini models", f"{p}.role")
        if not parts:
            continue
        if contents and contents[-1]["role"] == grole:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": grole, "parts": parts})
    return system, contents


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    decls = []
    for fn in function_tools(body, "Gemini"):
        decl: dict[str, Any] = {"name": fn["name"], "description": fn.get("description") or ""}
        if fn.get("parameters"):
            # The JSON Schema field, not `parameters` (an OpenAPI subset that rejects common
            # JSON Schema keys such as additionalProperties).
            decl["parametersJsonSchema"] = fn["parameters"]
        decls.append(decl)
    if decls:
        out["tools"] = [{"functionDeclarations": decls}]
    choice = body.get("tool_choice")
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice) \
        if isinstance(choice, str) else None
    config: dict[str, Any] = {}
    if mode:
        config["mode"] = mode
    elif isinstance(choice, dict):
        config = {"mode": "ANY", "allowedFunctionNames": [chosen_function(choice)]}
    if config and decls:
        out["toolConfig"] = {"functionCallingConfig": config}
    return out


_GEN = (("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"))


def to_gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completions request → a Gemini GenerateContentRequest."""
    system, contents = _contents(body.get("messages"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    out.update(_tools(body))
    gen: dict[str, Any] = {ours: body[theirs] for theirs, ours in _GEN
                           if isinstance(body.get(theirs), int | float)
                           and not isinstance(body.get(theirs), bool)}
    cap = max_output_tokens(body)
    if isinstance(cap, int):
        gen["maxOutputTokens"] = cap
    stop = body.get("stop")
    if stop:
        gen["stopSequences"] = stop_sequences(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            gen["responseJsonSchema"] = schema
    if gen:
        out["generationConfig"] = gen
    return out


def embed_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """OpenAI embeddings input → batchEmbedContents, one request per string."""
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
        raise invalid("Gemini embeddings take text input (a string or a list of strings)",
                      "input")
    reqs = []
    for s in inputs:
        r: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": s}]}}
        if isinstance(body.get("dimensions"), int):
            r["outputDimensionality"] = body["dimensions"]
        reqs.append(r)
    return {"requests": reqs}
