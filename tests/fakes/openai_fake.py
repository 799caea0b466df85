"""A fake OpenAI-compatible server (OpenAI's and vLLM's wire formats).

Shapes follow the API references: chat.completion / chat.completion.chunk / text_completion /
embedding list; streams end with `data: [DONE]`; with `stream_options.include_usage` a final
chunk with `choices: []` carries usage and every other chunk has `"usage": null` (OpenAI); vLLM
mode adds usage to every chunk under `continuous_usage_stats` and answers an over-long prompt
with its "maximum context length" 400.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, data_event, hello_words


class FakeOpenAI(FakeServer):
    def __init__(self, name: str = "openai", *, vllm: bool = False, words: int = 5,
                 api_key: str | None = None, max_context: int = 100_000,
                 cached_tokens: int = 0, reasoning_tokens: int = 0,
                 usage_on_last_content_chunk: bool = False, omit_usage: bool = False,
                 port: int | None = None) -> None:
        super().__init__(name, port)
        self.vllm = vllm
        self.words = words
        self.api_key = api_key
        self.max_context = max_context
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.usage_on_last_content_chunk = usage_on_last_content_chunk
        self.omit_usage = omit_usage
        self.prompt_tokens = 11
        # vLLM /metrics gauges this fake reports (set by tests to simulate queues).
        self.waiting = 0
        self.running = 0
        self.kv_usage = 0.0
        self.healthy = True

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="", status=200 if self.healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        # vLLM's exposition: gauges labelled by model_name (engine index on V1).
        label = 'engine="0",model_name="fake"'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{label}}} {self.running + self.in_flight}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{label}}} {self.waiting}\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{label}}} {self.kv_usage}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {
                "message": "Incorrect API key provided.", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}}, status=401)
        return None

    def text(self) -> list[str]:
        return hello_words(self.words)

    def usage(self, completion: int) -> dict[str, Any]:
        u: dict[str, Any] = {"prompt_tokens": self.prompt_tokens,
                             "completion_tokens": completion + self.reasoning_tokens,
                             "total_tokens":
                             self.prompt_tokens + completion + self.reasoning_tokens}
        if self.cached_tokens:
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            u["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return u

    def _context_error(self, body: dict[str, Any]) -> web.Response | None:
        size = len(json.dumps(body.get("messages") or body.get("prompt") or ""))
        if size <= self.max_context:
            return None
        if self.vllm:
            msg = (f"This model's maximum context length is {self.max_context} tokens. However, "
                   f"you requested {size} tokens in the messages. Please reduce the length.")
            return web.json_response({"object": "error", "message": msg,
                                      "type": "BadRequestError", "param": None, "code": 400},
                                     status=400)
        return web.json_response({"error": {
            "message": f"This model's maximum context length is {self.max_context} tokens.",
            "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded"}}, status=400)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await self.record(request)
        self.enter()
        try:
            denied = self._auth_error(request)
            if denied is not None:
                return denied
            fault = self.poison_fault(body) or self.take_fault()
            pre = await self.apply_pre_fault(fault)
            if pre is not None:
                return pre
            ctx = self._context_error(body)
            if ctx is not None:
                return ctx
            if body.get("stream"):
                return await self._stream(request, body, kind, fault)
            words = self.text()
            created = int(time.time())
            if kind == "chat":
                obj: dict[str, Any] = {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                    "model": body["model"], "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "message": {
                        "role": "assistant", "content": "".join(words), "refusal": None},
                        "logprobs": None, "finish_reason": "stop"}],
                }
            else:
                obj = {"id": "cmpl-fake", "object": "text_completion", "created": created,
                       "model": body["model"],
                       "choices": [{"index": 0, "text": "".join(words), "logprobs": None,
                                    "finish_reason": "stop"}]}
            if not self.omit_usage:
                obj["usage"] = self.usage(len(words))
            obj["x_fake_server"] = self.name
            return web.json_response(obj)
        finally:
            self.leave()

    async def _stream(self, request: web.Request, body: dict[str, Any], kind: str,
                      fault: Any) -> web.StreamResponse:
        opts = body.get("stream_options") or {}
        include = bool(opts.get("include_usage")) and not self.omit_usage
        continuous = self.vllm and bool(opts.get("continuous_usage_stats")) and not self.omit_usage
        words = self.text()
        created = int(time.time())
        model = body["model"]

        def chunk(i: int, delta: dict[str, Any] | None, finish: str | None,
                  usage: Any = "absent") -> bytes:
            if kind == "chat":
                choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]
                obj: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                       "created": created, "model": model,
                                       "system_fingerprint": "fp_fake", "choices": choices}
            else:
                choices = [] if delta is None else [{"index": 0, "text": delta.get("content", ""),
                                                     "logprobs": None, "finish_reason": finish}]
                obj = {"id": "cmpl-fake", "object": "text_completion", "created": created,
                       "model": model, "choices": choices}
            if usage != "absent":
                obj["usage"] = usage
            return data_event(obj)

        events: list[bytes] = []
        null_usage: Any = None if include else "absent"
        if kind == "chat":
            events.append(chunk(0, {"role": "assistant", "content": ""}, None,
                                self.usage(0) if continuous else null_usage))
        for i, w in enumerate(words):
            last = i == len(words) - 1
            usage: Any = null_usage
            if continuous or (last and self.usage_on_last_content_chunk and include):
                usage = self.usage(i + 1)
            events.append(chunk(i, {"content": w}, "stop" if last else None, usage))
        if include and not self.usage_on_last_content_chunk:
            events.append(chunk(0, None, None, self.usage(len(words))))
        events.append(b"data: [DONE]\n\n")
        return await self.stream(request, events, fault, {"error": {
            "message": "injected mid-stream error", "type": "server_error", "param": None,
            "code": None}})

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        fault = self.take_fault()
        pre = await self.apply_pre_fault(fault)
        if pre is not None:
            return pre
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                for i in range(len(items))]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": 3 * len(items),
                                            "total_tokens": 3 * len(items)}})
