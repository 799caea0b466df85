"""A fake OpenAI-compatible server (OpenAI's and vLLM's wire formats).

Shapes follow the API references: chat.completion / chat.completion.chunk / text_completion /
embedding list; streams end with `data: [DONE]`; with `stream_options.include_usage` a final
chunk with `choices: []` carries usage and every other chunk has `"usage": null` (OpenAI); vLLM
mode adds usage to every chunk under `continuous_usage_stats` and answers an over-long prompt
with its "maximum context length" 400. Reranking (`/v1/rerank`, `/rerank`) and scoring
(`/v1/score`, `/score`) answer as vLLM's cross-encoder server does
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html#re-rank-api): results
sorted by relevance, `document.text` in each, usage counted per (query, document) pair.
The Responses API (`/v1/responses`: objects, typed event streams, stored responses) is in
`responses_wire.py`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, data_event, hello_words
from tests.fakes.responses_wire import ResponsesWire


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
        # The finish_reason of every reply ("length": cut by max_tokens).
        self.finish_reason = "stop"
        # vLLM /metrics gauges this fake reports (set by tests to simulate queues).
        self.waiting = 0
        self.running = 0
        self.kv_usage = 0.0
        # vllm:request_queue_time_seconds: when set, each /metrics scrape reports one more
        # request scheduled after waiting this many seconds (a steady mean queue time).
        self.queue_time_step: float | None = None
        self._queue_totals = (0.0, 0)
        self.healthy = True
        # `POST /v1/responses` (OpenAI's Responses API; vLLM ≥ 0.10 serves it too), with the
        # responses it stored: tests/fakes/responses_wire.py.
        self.responses_api = ResponsesWire(self)
        # Rerank usage as vLLM reports it: "vllm" (prompt_tokens and total_tokens), "total"
        # (older vLLM and Jina: total_tokens only), or "none" (Cohere bills search units).
        self.rerank_usage = "vllm"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/moderations", self.moderations)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/responses/input_tokens", self.input_tokens)
        for prefix in ("/v1", ""):
            app.router.add_post(prefix + "/rerank", self.rerank)
            app.router.add_post(prefix + "/score", self.score)
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
        if self.queue_time_step is not None:
            total, count = self._queue_totals
            total, count = self._queue_totals = (total + self.queue_time_step, count + 1)
            text += ("# TYPE vllm:request_queue_time_seconds histogram\n"
                     f"vllm:request_queue_time_seconds_sum{{{label}}} {total}\n"
                     f"vllm:request_queue_time_seconds_count{{{label}}} {count}\n")
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

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        self.enter()
        try:
            denied = self._auth_error(request)
            if denied is not None:
                return denied
            model = body.get("model") if isinstance(body, dict) else None
            return await self.responses_api.serve(request, body, str(model))
        finally:
            self.leave()

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
                        "logprobs": None, "finish_reason": self.finish_reason}],
                }
            else:
                obj = {"id": "cmpl-fake", "object": "text_completion", "created": created,
                       "model": body["model"],
                       "choices": [{"index": 0, "text": "".join(words), "logprobs": None,
                                    "finish_reason": self.finish_reason}]}
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
            events.append(chunk(i, {"content": w}, self.finish_reason if last else None, usage))
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

    # OpenAI's moderation categories (https://platform.openai.com/docs/api-reference/moderations).
    MODERATION_CATEGORIES = (
        "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
        "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
        "sexual/minors", "violence", "violence/graphic")
    # An input containing this word is flagged for `violence` (score 0.97); others score 0.01.
    MODERATION_FLAG_WORD = "hurt"

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/moderations`: one result per input (a text, texts, or multimodal parts)."""
        body = await self.record(request)
        fault = self.take_fault()
        pre = await self.apply_pre_fault(fault)
        if pre is not None:
            return pre
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        results = []
        for item in items:
            text = item.get("text", "") if isinstance(item, dict) else str(item)
            hit = self.MODERATION_FLAG_WORD in text.lower()
            results.append({
                "flagged": hit,
                "categories": {c: hit and c == "violence" for c in self.MODERATION_CATEGORIES},
                "category_scores": {c: 0.97 if hit and c == "violence" else 0.01
                                    for c in self.MODERATION_CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in self.MODERATION_CATEGORIES},
            })
        return web.json_response({"id": "modr-fake", "model": body.get("model"),
                                  "results": results})

    # ---- reranking and scoring (vLLM's cross-encoder endpoints) -------------------------------

    @staticmethod
    def pair_tokens(text_1: str, text_2: str) -> int:
        """What the fake counts for one pair: its words plus [CLS] and two [SEP]s."""
        return len(text_1.split()) + len(text_2.split()) + 3

    @staticmethod
    def relevance(query: str, doc: str) -> float:
        """The share of the query's words in the document: deterministic, in [0, 1]."""
        words = set(query.lower().split())
        return round(len(words & set(doc.lower().split())) / len(words), 4) if words else 0.0

    def _vllm_error(self, message: str) -> web.Response:
        return web.json_response({"object": "error", "message": message,
                                  "type": "BadRequestError", "param": None, "code": 400},
                                 status=400)

    async def _scoring(self, request: web.Request) -> tuple[Any, web.Response | None]:
        body = await self.record(request)
        denied = self._auth_error(request)
        if denied is not None:
            return body, denied
        return body, await self.apply_pre_fault(self.take_fault())

    async def rerank(self, request: web.Request) -> web.Response:
        body, early = await self._scoring(request)
        if early is not None:
            return early
        query = body.get("query")
        docs = [d.get("text") if isinstance(d, dict) else d for d in body.get("documents") or []]
        if not isinstance(query, str) or not docs or not all(isinstance(d, str) for d in docs):
            return self._vllm_error("query must be a string and documents a list of texts")
        results = sorted(({"index": i, "document": {"text": d},
                           "relevance_score": self.relevance(query, d)}
                          for i, d in enumerate(docs)),
                         key=lambda r: (-r["relevance_score"], r["index"]))
        top_n = body.get("top_n")
        if isinstance(top_n, int) and top_n > 0:
            results = results[:top_n]
        tokens = sum(self.pair_tokens(query, d) for d in docs)
        obj: dict[str, Any] = {"id": "rerank-fake", "model": body.get("model"),
                               "results": results}
        if self.rerank_usage == "vllm":
            obj["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        elif self.rerank_usage == "total":
            obj["usage"] = {"total_tokens": tokens}
        return web.json_response(obj)

    async def score(self, request: web.Request) -> web.Response:
        body, early = await self._scoring(request)
        if early is not None:
            return early
        first, second = body.get("text_1"), body.get("text_2")
        left = [first] if isinstance(first, str) else list(first or [])
        right = [second] if isinstance(second, str) else list(second or [])
        if len(left) == 1:
            left = left * len(right)
        if not right or len(left) != len(right) \
                or not all(isinstance(t, str) for t in left + right):
            return self._vllm_error("text_1 and text_2 must be texts: one against many, or "
                                    "two lists of one length")
        data = [{"index": i, "object": "score", "score": self.relevance(a, b)}
                for i, (a, b) in enumerate(zip(left, right, strict=True))]
        tokens = sum(self.pair_tokens(a, b) for a, b in zip(left, right, strict=True))
        return web.json_response({
            "id": "score-fake", "object": "list", "created": int(time.time()),
            "model": body.get("model"), "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}})

    # ---- Responses token counting (https://platform.openai.com/docs/api-reference/responses/input-tokens)

    @staticmethod
    def input_token_count(body: dict[str, Any]) -> int:
        """The fake's count: a quarter of the JSON characters of what the prompt carries."""
        carried = [body.get("instructions"), body.get("input"), body.get("tools")]
        return max(1, len(json.dumps(carried)) // 4)

    async def input_tokens(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        pre = await self.apply_pre_fault(self.take_fault())
        if pre is not None:
            return pre
        if not isinstance(body, dict) or "stream" in body:
            key = "stream" if isinstance(body, dict) else None
            return web.json_response({"error": {
                "message": f"Unknown parameter: '{key}'.", "type": "invalid_request_error",
                "param": key, "code": "unknown_parameter"}}, status=400)
        prev = body.get("previous_response_id")
        if prev is not None and prev not in self.responses_api.stored:
            return web.json_response({"error": {
                "message": f"Previous response with id '{prev}' not found.",
                "type": "invalid_request_error", "param": "previous_response_id",
                "code": "previous_response_not_found"}}, status=400)
        return web.json_response({"object": "response.input_tokens",
                                  "input_tokens": self.input_token_count(body)})
