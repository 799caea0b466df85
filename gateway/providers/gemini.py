"""Google Gemini API (https://ai.google.dev/api/generate-content) ↔ OpenAI chat completions and
embeddings. Gemini has no ingress of its own here: every call is translated, streams included."""

from __future__ import annotations

import base64
import json
import mimetypes
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from gateway.accounting.usage import Usage
from gateway.call import Call, Ingress
from gateway.errors import InvalidRequest, UpstreamError
from gateway.policy.models import GeminiProvider
from gateway.providers.base import Classified, ErrorKind, Reply, Target
from gateway.providers.scrub import scrub
from gateway.upstream import UpstreamRequest

# https://ai.google.dev/api/generate-content#FinishReason
_SAFETY = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", **{r: "content_filter" for r in _SAFETY}}
_CONTEXT_MARKERS = ("input token count", "exceeds the maximum number of tokens",
                    "token count exceeds", "context window", "too many tokens")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def usage_of(meta: Any) -> Usage | None:
    """`usageMetadata` → Usage. `promptTokenCount` includes the cached tokens; thinking tokens
    are counted apart from `candidatesTokenCount`."""
    if not isinstance(meta, dict):
        return None

    def n(key: str) -> int:
        v = meta.get(key)
        return v if isinstance(v, int) and v > 0 else 0

    cached = min(n("cachedContentTokenCount"), n("promptTokenCount"))
    return Usage(input_uncached=n("promptTokenCount") - cached + n("toolUsePromptTokenCount"),
                 cache_read=cached, output=n("candidatesTokenCount"),
                 reasoning=n("thoughtsTokenCount"))


# ---- OpenAI request → Gemini request ---------------------------------------------------------

def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _media(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head or not data:
            raise _bad("image data URLs must be base64 (data:image/png;base64,…)", param)
        return {"inlineData": {"mimeType": head[5:].split(";")[0], "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        mime = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise _bad("image_url.url must be an http(s) URL or a base64 data URL", param)


def _parts(content: Any, param: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content parts", param)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            if part.get(kind):
                out.append({"text": part[kind]})
        elif kind == "image_url":
            img = part.get("image_url")
            url = img.get("url", "") if isinstance(img, dict) else str(img or "")
            out.append(_media(url, f"{param}[{j}]"))
        elif kind == "file" and isinstance(part.get("file"), dict) \
                and str(part["file"].get("file_data", "")).startswith("data:"):
            out.append(_media(part["file"]["file_data"], f"{param}[{j}]"))
        else:
            raise _bad(f"content part type {kind!r} is not supported by Gemini models",
                       f"{param}[{j}]")
    return out


def _function_call(call: Any, param: str) -> tuple[str, dict[str, Any]]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise _bad("tool_calls entries need function.name", param)
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise _bad("function.arguments must be a JSON object", f"{param}.function.arguments")
    part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": args}}
    # Gemini 3 wants the thought signature of a function call back; it travels to the client
    # as `extra_content.google.thought_signature`, as on Google's own OpenAI-compatible API.
    sig = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if sig:
        part["thoughtSignature"] = sig
    return fn["name"], part


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
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id → function name: functionResponse needs the name
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
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
                raise _bad("tool message answers no earlier tool call (unknown tool_call_id)",
                           f"{p}.tool_call_id")
            parts = [{"functionResponse": {"name": name,
                                           "response": _function_response(m.get("content"))}}]
            grole = "user"
        else:
            raise _bad(f"role {role!r} is not supported by Gemini models", f"{p}.role")
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
    for i, t in enumerate(body.get("tools") or []):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise _bad("only function tools are supported by Gemini models", f"tools[{i}]")
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
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise _bad("tool_choice must name a function", "tool_choice")
        config = {"mode": "ANY", "allowedFunctionNames": [name]}
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
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(cap, int):
        gen["maxOutputTokens"] = cap
    stop = body.get("stop")
    if stop:
        gen["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            gen["responseJsonSchema"] = schema
    if gen:
        out["generationConfig"] = gen
    return out


# ---- Gemini reply → OpenAI reply ---------------------------------------------------------------

def _tool_call(part: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    fc = part["functionCall"]
    call: dict[str, Any] = {
        "id": fc.get("id") or "call_" + uuid.uuid4().hex[:24], "type": "function",
        "function": {"name": fc.get("name"),
                     "arguments": json.dumps(fc.get("args") or {}, ensure_ascii=False)},
    }
    if index is not None:
        call = {"index": index, **call}
    if part.get("thoughtSignature"):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _finish(candidate: dict[str, Any], tools: bool) -> str:
    reason = FINISH_REASONS.get(candidate.get("finishReason") or "STOP", "stop")
    return "tool_calls" if tools and reason == "stop" else reason


def chat_completion(resp: dict[str, Any], public_model: str) -> dict[str, Any]:
    choices = []
    for k, cand in enumerate(resp.get("candidates") or []):
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or []:
            if "functionCall" in part:
                calls.append(_tool_call(part))
            elif "text" in part:
                (thoughts if part.get("thought") else texts).append(part["text"])
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(texts) if texts or not calls else None,
                                   "refusal": None}
        if calls:
            message["tool_calls"] = calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        choices.append({"index": cand.get("index", k), "message": message, "logprobs": None,
                        "finish_reason": _finish(cand, bool(calls))})
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices = [{"index": 0, "message": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None, "finish_reason": "content_filter"}]
    out: dict[str, Any] = {
        "id": resp.get("responseId") or "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion", "created": int(time.time()), "model": public_model,
        "choices": choices,
    }
    usage = usage_of(resp.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out


class GeminiToOpenAIStream:
    """`streamGenerateContent?alt=sse` chunks → OpenAI `chat.completion.chunk` SSE.

    Gemini's stream has no terminator: it is complete once every candidate has a finishReason.
    """

    __slots__ = ("_buf", "_classify", "_created", "_finished", "_id", "_include_usage", "_model",
                 "_seen", "_tools", "chunks", "done", "error", "usage")

    def __init__(self, public_model: str, include_usage: bool,
                 classify: Callable[[int, bytes], Classified]) -> None:
        self._buf = b""
        self._model = public_model
        self._include_usage = include_usage
        self._classify = classify
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self._created = int(time.time())
        self._seen: set[int] = set()
        self._finished: set[int] = set()
        self._tools: dict[int, int] = {}  # candidate index → tool calls so far
        self.usage: Usage | None = None
        # Content chunks forwarded: the proxy's output estimate when no usage arrives.
        self.chunks = 0
        self.done = False
        self.error: Classified | None = None

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        return b"data: " + _json({"id": self._id, "object": "chat.completion.chunk",
                                  "created": self._created, "model": self._model,
                                  "choices": choices}) + b"\n\n"

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if b"\r\n" in buf:  # Gemini separates events with CRLF CRLF
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2:]
        out = []
        for event in buf[:end].split(b"\n\n"):
            payload = b"\n".join(ln[5:].lstrip(b" ") for ln in event.split(b"\n")
                                 if ln.startswith(b"data:"))
            try:
                obj = json.loads(payload) if payload else None
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(self._event(obj, payload))
        return b"".join(out)

    def _event(self, obj: dict[str, Any], payload: bytes) -> bytes:
        if "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            code = err.get("code")
            self.error = self._classify(code if isinstance(code, int) else 500, payload)
            return b""
        if obj.get("responseId") and not self._seen:
            self._id = obj["responseId"]
        usage = usage_of(obj.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        choices: list[dict[str, Any]] = []
        finals: list[dict[str, Any]] = []
        for k, cand in enumerate(obj.get("candidates") or []):
            idx = cand.get("index", k)
            delta: dict[str, Any] = {}
            if idx not in self._seen:
                self._seen.add(idx)
                delta["role"] = "assistant"
            for part in (cand.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    n = self._tools.get(idx, 0)
                    self._tools[idx] = n + 1
                    delta.setdefault("tool_calls", []).append(_tool_call(part, n))
                elif part.get("text"):
                    key = "reasoning_content" if part.get("thought") else "content"
                    delta[key] = delta.get(key, "") + part["text"]
            finish = None
            if cand.get("finishReason"):
                finish = _finish(cand, idx in self._tools)
                self._finished.add(idx)
            # The finish travels in a chunk of its own with an empty delta, as OpenAI sends it.
            if delta:
                self.chunks += 1
                choices.append({"index": idx, "delta": delta, "logprobs": None,
                                "finish_reason": None})
            if finish:
                finals.append({"index": idx, "delta": {}, "logprobs": None,
                               "finish_reason": finish})
        if not obj.get("candidates") and (obj.get("promptFeedback") or {}).get("blockReason"):
            choices.append({"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": "content_filter"})
            self.done = True
        if self._seen and self._finished >= self._seen:
            self.done = True
        return (self._chunk(choices) if choices else b"") + (self._chunk(finals) if finals else b"")

    def finish(self) -> bytes:
        tail = b""
        if self._include_usage and self.usage is not None:
            tail = b"data: " + _json({"id": self._id, "object": "chat.completion.chunk",
                                      "created": self._created, "model": self._model,
                                      "choices": [], "usage": self.usage.to_openai()}) + b"\n\n"
        return tail + b"data: [DONE]\n\n"


# ---- the adapter -------------------------------------------------------------------------------

class GeminiAdapter:
    native_ingress: Ingress = "openai"

    def __init__(self, name: str, config: GeminiProvider) -> None:
        self.name = name
        self.config = config
        self._base = (config.base_url or "https://generativelanguage.googleapis.com/v1beta"
                      ).rstrip("/")
        # The key goes in a header, never in `?key=`: URLs end up in logs and traces.
        self._headers = {"content-type": "application/json", **config.headers}
        if config.api_key:
            self._headers["x-goog-api-key"] = config.api_key
        self._secrets = tuple(s for s in (config.api_key,) if s)

    def build_request(self, call: Call, target: Target, native: bool) -> UpstreamRequest:
        model = target.upstream_model.removeprefix("models/")
        if call.endpoint == "embeddings":
            return UpstreamRequest(f"{self._base}/models/{model}:batchEmbedContents",
                                   _json(embed_request(call.body, model)), self._headers)
        if call.endpoint != "chat":
            raise InvalidRequest(f"Model {call.model!r} is served by Gemini, which has no "
                                 "/v1/completions endpoint; use /v1/chat/completions.",
                                 param="model")
        method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        return UpstreamRequest(f"{self._base}/models/{model}:{method}",
                               _json(to_gemini_request(call.body)), self._headers)

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply:
        try:
            resp = json.loads(body)
        except ValueError:
            resp = None
        if not isinstance(resp, dict):
            raise UpstreamError(f"{self.name} returned a reply that is not JSON")
        if call.endpoint == "embeddings":
            return Reply(_json(embed_reply(resp, call)), None)
        out = chat_completion(resp, call.model)
        return Reply(_json(out), usage_of(resp.get("usageMetadata")))

    def stream(self, call: Call, target: Target, native: bool) -> GeminiToOpenAIStream:
        return GeminiToOpenAIStream(call.model, call.client_include_usage,
                                    lambda s, b: self.classify(s, b, {}))

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Classified:
        err = _error(body)
        message = scrub(str(err.get("message") or ""), self._secrets) \
            or f"upstream returned HTTP {status}"
        gstatus = err.get("status") if isinstance(err.get("status"), str) else None
        code = gstatus
        low = message.lower()
        if status == 400 and ("API_KEY_INVALID" in body.decode("utf-8", "replace")
                              or "api key not valid" in low):
            kind = ErrorKind.CONFIG  # Gemini reports a bad key as 400 INVALID_ARGUMENT
        elif status in (400, 413) and any(m in low for m in _CONTEXT_MARKERS):
            kind, code = ErrorKind.CONTEXT_LENGTH, "context_length_exceeded"
        elif status in (408, 429) or status >= 500:
            kind = ErrorKind.RETRYABLE
        elif status in (401, 403):
            kind = ErrorKind.CONFIG
        else:
            kind = ErrorKind.CLIENT
        etype = "invalid_request_error" if kind is ErrorKind.CLIENT else gstatus
        return Classified(kind, status, message, code, etype, None, _retry_after(err, headers))


def _error(body: bytes) -> dict[str, Any]:
    """`{"error": {"code", "message", "status", "details"}}`, or a list of one (the JSON-array
    form of streamGenerateContent)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return {"message": body[:500].decode("utf-8", "replace").strip()}
    if isinstance(obj, list) and obj:
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else {}


def _retry_after(err: dict[str, Any], headers: Mapping[str, str]) -> float | None:
    for d in err.get("details") or []:
        # google.rpc.RetryInfo: {"retryDelay": "37s"}
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                pass
    v = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(v) if v else None
    except ValueError:
        return None


# ---- embeddings --------------------------------------------------------------------------------

def embed_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
        raise _bad("Gemini embeddings take text input (a string or a list of strings)", "input")
    reqs = []
    for s in inputs:
        r: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": s}]}}
        if isinstance(body.get("dimensions"), int):
            r["outputDimensionality"] = body["dimensions"]
        reqs.append(r)
    return {"requests": reqs}


def embed_reply(resp: dict[str, Any], call: Call) -> dict[str, Any]:
    b64 = call.body.get("encoding_format") == "base64"
    data = []
    for i, e in enumerate(resp.get("embeddings") or []):
        values = e.get("values") or []
        vec: Any = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode() \
            if b64 else values
        data.append({"object": "embedding", "index": i, "embedding": vec})
    # Gemini reports no token counts for embeddings: the gateway estimates them.
    return {"object": "list", "data": data, "model": call.model,
            "usage": {"prompt_tokens": 0, "total_tokens": 0}}
