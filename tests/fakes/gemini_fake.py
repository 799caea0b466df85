"""A fake Google Gemini API (v1beta): generateContent, streamGenerateContent, batchEmbedContents.

Shapes follow https://ai.google.dev/api/generate-content: a GenerateContentResponse
(`candidates[].content.parts`, `finishReason`, `usageMetadata`, `modelVersion`, `responseId`);
with `?alt=sse` a stream of `data: <GenerateContentResponse>` events separated by CRLF CRLF, with
no terminator — the last one carries `finishReason` and the full usage. Errors are
`{"error": {"code", "message", "status"}}`.

Validation rejects what Gemini rejects: a missing key (403 PERMISSION_DENIED), a wrong key
(400 INVALID_ARGUMENT, reason API_KEY_INVALID), unknown fields ("Invalid JSON payload
received. Unknown name …"), roles other than user/model, empty parts, a part with no data, a
function response that follows no function call.

Scripting is `FakeServer`'s plus `reply_next(parts, finish_reason)`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, data_event, hello_words

_TOP = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
        "safetySettings", "cachedContent"}
_GEN = {"temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
        "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
        "responseJsonSchema", "thinkingConfig", "responseLogprobs", "logprobs"}
_PART = {"text", "inlineData", "fileData", "functionCall", "functionResponse",
         "executableCode", "codeExecutionResult"}
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_body(code: int, message: str, status: str | None = None,
               details: list[Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message,
                           "status": status or _STATUS.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


class Invalid(Exception):
    pass


def _unknown(name: str, where: str) -> Invalid:
    at = f" at '{where}'" if where else ""
    return Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    for key in body:
        if key not in _TOP:
            raise _unknown(key, "")
    for key in body.get("generationConfig") or {}:
        if key not in _GEN:
            raise _unknown(key, "generation_config")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    calls_before = 0
    for i, c in enumerate(contents):
        role = c.get("role", "user")
        if role not in ("user", "model"):
            raise Invalid(f"Please use a valid role: user, model. (contents[{i}].role: {role})")
        parts = c.get("parts")
        if not parts:
            raise Invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must "
                          "not be empty.")
        responses = 0
        for j, p in enumerate(parts):
            data = [k for k in p if k in _PART]
            extra = [k for k in p if k not in _PART and k not in ("thought", "thoughtSignature")]
            if extra:
                raise _unknown(extra[0], f"contents[{i}].parts[{j}]")
            if len(data) != 1:
                raise Invalid(f"* GenerateContentRequest.contents[{i}].parts[{j}].data: "
                              "required oneof field 'data' must have one initialized field")
            if "functionResponse" in p:
                responses += 1
                if not isinstance(p["functionResponse"].get("response"), dict):
                    raise Invalid(f"contents[{i}].parts[{j}].function_response.response: "
                                  "must be an object")
        if responses and not calls_before:
            raise Invalid("Please ensure that function response turn comes immediately after a "
                          "function call turn.")
        calls_before = sum(1 for p in parts if "functionCall" in p)
    for tool in body.get("tools") or []:
        for k, d in enumerate(tool.get("functionDeclarations") or []):
            if not d.get("name"):
                raise Invalid(f"* GenerateContentRequest.tools[0].function_declarations[{k}]"
                              ".name: Name cannot be empty.")
            if "parameters" in d and "parametersJsonSchema" in d:
                raise Invalid("parameters and parametersJsonSchema are mutually exclusive")
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if mode is not None and mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        raise Invalid(f'Invalid value at \'tool_config.function_calling_config.mode\', "{mode}"')


class FakeGemini(FakeServer):
    def __init__(self, name: str = "gemini", *, api_key: str = "AIzaFakeGeminiKey0123456789",
                 words: int = 5, prompt_tokens: int = 11, cached_tokens: int = 0,
                 thoughts_tokens: int = 0, max_context: int = 100_000,
                 omit_usage: bool = False, port: int | None = None) -> None:
        super().__init__(name, port)
        self.api_key = api_key
        self.words = words
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.thoughts_tokens = thoughts_tokens
        self.max_context = max_context
        self.omit_usage = omit_usage  # no usageMetadata at all

    def reply_next(self, parts: list[dict[str, Any]], finish_reason: str = "STOP") -> None:
        """The next successful reply has these parts (text, functionCall, thought)."""
        self.queue_reply((parts, finish_reason))

    def _reply(self) -> tuple[list[dict[str, Any]], str]:
        reply: tuple[list[dict[str, Any]], str] | None = self.next_reply()
        if reply is not None:
            return reply
        return [{"text": w} for w in hello_words(self.words)], "STOP"

    def usage(self, candidates: int, final: bool = True) -> dict[str, Any]:
        u: dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        if final:
            u["candidatesTokenCount"] = candidates
        if self.cached_tokens:
            u["cachedContentTokenCount"] = self.cached_tokens
        if self.thoughts_tokens and final:
            u["thoughtsTokenCount"] = self.thoughts_tokens
        u["totalTokenCount"] = self.prompt_tokens + (candidates + self.thoughts_tokens
                                                     if final else 0)
        return u

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{call}", self.models)

    def _error(self, code: int, message: str, status: str | None = None,
               details: list[Any] | None = None) -> web.Response:
        return web.json_response(error_body(code, message, status, details), status=code)

    def fail_body(self, status: int) -> Any:
        return error_body(status, f"{self.name} injected failure")

    async def models(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        model, _, method = request.match_info["call"].partition(":")
        self.enter()
        try:
            key = request.headers.get("x-goog-api-key") or request.query.get("key")
            if not key:
                return self._error(403, "Method doesn't allow unregistered callers (callers "
                                        "without established identity). Please use API Key or "
                                        "other form of API consumer identity to call this API.")
            if key != self.api_key:
                return self._error(400, "API key not valid. Please pass a valid API key.",
                                   details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                             "reason": "API_KEY_INVALID",
                                             "domain": "googleapis.com"}])
            fault = self.take_fault()
            pre = await self.apply_pre_fault(fault)
            if pre is not None:
                return pre
            if method == "batchEmbedContents":
                return self._embed(body)
            if method not in ("generateContent", "streamGenerateContent"):
                return self._error(404, f"Method {method} not found", "NOT_FOUND")
            try:
                validate(body)
            except Invalid as e:
                return self._error(400, str(e))
            size = len(json.dumps(body["contents"]))
            if size > self.max_context:
                return self._error(400, f"The input token count ({size}) exceeds the maximum "
                                        f"number of tokens allowed ({self.max_context}).")
            parts, finish = self._reply()
            if method == "streamGenerateContent":
                if request.query.get("alt") != "sse":
                    return self._error(400, "this fake streams only with ?alt=sse")
                # Gemini separates its events with CRLF CRLF.
                return await self.stream(
                    request, self._events(model, parts, finish), fault,
                    error_body(503, "The model is overloaded."),
                    frame=lambda obj: data_event(obj, b"\r\n\r\n"))
            return web.json_response(self._response(model, parts, finish, self.usage(len(parts))))
        finally:
            self.leave()

    def _response(self, model: str, parts: list[dict[str, Any]], finish: str | None,
                  usage: dict[str, Any]) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        out: dict[str, Any] = {"candidates": [cand], "modelVersion": model,
                               "responseId": "fake-response-id"}
        if not self.omit_usage:
            out["usageMetadata"] = usage
        return out

    def _events(self, model: str, parts: list[dict[str, Any]], finish: str) -> list[bytes]:
        """One event per part; the last carries the finish reason and the full usage."""
        out = []
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            obj = self._response(model, [part], finish if last else None,
                                 self.usage(len(parts) if last else n + 1, final=last))
            out.append(data_event(obj, b"\r\n\r\n"))
        return out

    def _embed(self, body: dict[str, Any]) -> web.Response:
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            return self._error(400, "* BatchEmbedContentsRequest.requests: requests is empty")
        out = []
        for r in reqs:
            n = r.get("outputDimensionality") or 3
            out.append({"values": [round(0.1 * (k + 1), 1) for k in range(n)]})
        return web.json_response({"embeddings": out})
