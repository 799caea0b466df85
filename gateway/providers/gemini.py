"""Google Gemini API (https://ai.google.dev/api/generate-content) ↔ OpenAI chat completions and
embeddings. Gemini has no ingress of its own here: every call is translated, streams included.
The request side is `gemini_request.py`; replies, streams, errors and the adapter are here."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

from gateway.accounting.usage import Usage
from gateway.call import Call, Endpoint, Ingress
from gateway.errors import InvalidRequest, UpstreamError
from gateway.ids import new_id
from gateway.policy.models import GeminiProvider
from gateway.providers.base import Classified, ErrorKind, Reply, Target
from gateway.providers.gemini_request import embed_request, to_gemini_request
from gateway.providers.http_errors import body_text, client_message, error_kind, parse_retry_after
from gateway.providers.openai_shape import assistant_message, completion
from gateway.providers.sse import ChunkWriter, SSEEvents, compact_json
from gateway.upstream import UpstreamRequest

# https://ai.google.dev/api/generate-content#FinishReason
_SAFETY = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", **{r: "content_filter" for r in _SAFETY}}
_CONTEXT_MARKERS = ("input token count", "exceeds the maximum number of tokens",
                    "token count exceeds", "context window", "too many tokens")


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


# ---- Gemini reply → OpenAI reply ---------------------------------------------------------------

def _tool_call(part: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    fc = part["functionCall"]
    call: dict[str, Any] = {
        "id": fc.get("id") or "call_" + new_id()[-24:], "type": "function",
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
        choices.append({"index": cand.get("index", k),
                        "message": assistant_message(texts, thoughts, calls), "logprobs": None,
                        "finish_reason": _finish(cand, bool(calls))})
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices = [{"index": 0, "message": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None, "finish_reason": "content_filter"}]
    return completion(resp.get("responseId") or "chatcmpl-" + new_id(), public_model,
                      choices, usage_of(resp.get("usageMetadata")))


class GeminiToOpenAIStream:
    """`streamGenerateContent?alt=sse` chunks → OpenAI `chat.completion.chunk` SSE.

    Gemini's stream has no terminator: it is complete once every candidate has a finishReason.
    """

    __slots__ = ("_classify", "_events", "_finished", "_include_usage", "_out", "_seen", "_tools",
                 "chunks", "done", "error", "usage")

    def __init__(self, public_model: str, include_usage: bool,
                 classify: Callable[[int, bytes], Classified]) -> None:
        self._events = SSEEvents()
        self._out = ChunkWriter(public_model, "chatcmpl-" + new_id())
        self._include_usage = include_usage
        self._classify = classify
        self._seen: set[int] = set()
        self._finished: set[int] = set()
        self._tools: dict[int, int] = {}  # candidate index → tool calls so far
        self.usage: Usage | None = None
        # Content chunks forwarded: the proxy's output estimate when no usage arrives.
        self.chunks = 0
        self.done = False
        self.error: Classified | None = None

    def feed(self, data: bytes) -> bytes:
        out = []
        for _, payload, _ in self._events.feed(data):
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
            self._out.id = obj["responseId"]
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
        chunk = self._out.chunk
        return (chunk(choices) if choices else b"") + (chunk(finals) if finals else b"")

    def finish(self) -> bytes:
        return self._out.end(self.usage, self._include_usage)


# ---- the adapter -------------------------------------------------------------------------------

class GeminiAdapter:
    # Every client format is translated to Gemini's.
    native_ingresses: frozenset[Ingress] = frozenset()
    endpoints: frozenset[Endpoint] = frozenset({"chat", "embeddings"})

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
                                   compact_json(embed_request(call.body, model)), self._headers)
        if call.endpoint != "chat":
            raise InvalidRequest(f"Model {call.model!r} is served by Gemini, which has no "
                                 f"/v1/{call.endpoint} endpoint; use /v1/chat/completions.",
                                 param="model")
        method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        return UpstreamRequest(f"{self._base}/models/{model}:{method}",
                               compact_json(to_gemini_request(call.body)), self._headers)

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply:
        try:
            resp = json.loads(body)
        except ValueError:
            resp = None
        if not isinstance(resp, dict):
            raise UpstreamError(f"{self.name} returned a reply that is not JSON")
        if call.endpoint == "embeddings":
            return Reply(compact_json(embed_reply(resp, call)), None)
        out = chat_completion(resp, call.model)
        return Reply(compact_json(out), usage_of(resp.get("usageMetadata")))

    def stream(self, call: Call, target: Target, native: bool) -> GeminiToOpenAIStream:
        return GeminiToOpenAIStream(call.model, call.client_include_usage,
                                    lambda s, b: self.classify(s, b, {}))

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Classified:
        err = _error(body)
        message = client_message(str(err.get("message") or ""), self._secrets, status)
        gstatus = err.get("status") if isinstance(err.get("status"), str) else None
        low = message.lower()
        if status == 400 and ("API_KEY_INVALID" in body.decode("utf-8", "replace")
                              or "api key not valid" in low):
            kind = ErrorKind.CONFIG  # Gemini reports a bad key as 400 INVALID_ARGUMENT
        else:
            # No 409 among the retryable: Gemini has no conflict error to wait out.
            kind = error_kind(status, low, _CONTEXT_MARKERS, retry_statuses=(408, 429))
        code = "context_length_exceeded" if kind is ErrorKind.CONTEXT_LENGTH else gstatus
        etype = "invalid_request_error" if kind is ErrorKind.CLIENT else gstatus
        return Classified(kind, status, message, code, etype, None, _retry_after(err, headers))


def _error(body: bytes) -> dict[str, Any]:
    """`{"error": {"code", "message", "status", "details"}}`, or a list of one (the JSON-array
    form of streamGenerateContent)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return {"message": body_text(body)}
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
    return parse_retry_after(headers)


# ---- embeddings --------------------------------------------------------------------------------

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
