"""A fake Azure OpenAI resource: `/openai/deployments/{deployment}/…?api-version=…` and the
newer `/openai/v1/…` with the deployment in the body's `model`.

Shapes follow the Azure OpenAI REST reference: OpenAI's chat.completion with Azure's additions
(`prompt_filter_results`, per-choice `content_filter_results`), the underlying model's own name
in `model` (not the deployment's), and a stream whose first chunk carries only
`prompt_filter_results` (`choices: []`, `"model": ""`). Errors use Azure's codes: 401 for a
wrong `api-key`, 404 "Resource not found" without `api-version`, 404 DeploymentNotFound for an
unknown deployment.

The Responses API: `/openai/v1/responses` and, with a dated api-version, `/openai/responses`
(the deployment in the body's `model`), answered as OpenAI's (`responses_wire.py`) with the
underlying model's name in `model`.

Scripting is `FakeServer`'s.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer, data_event, hello_words
from tests.fakes.responses_wire import ResponsesWire

_FILTER = {"hate": {"filtered": False, "severity": "safe"},
           "self_harm": {"filtered": False, "severity": "safe"},
           "sexual": {"filtered": False, "severity": "safe"},
           "violence": {"filtered": False, "severity": "safe"}}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": _FILTER}]


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class FakeAzure(FakeServer):
    def __init__(self, name: str = "azure", *, api_key: str = "azure-fake-key-0123456789",
                 entra_token: str | None = None, deployments: dict[str, str] | None = None,
                 words: int = 5, prompt_tokens: int = 11, omit_usage: bool = False,
                 port: int | None = None) -> None:
        super().__init__(name, port)
        self.api_key = api_key
        self.entra_token = entra_token
        # deployment name → the underlying model it serves
        self.deployments = deployments or {"gpt4o-prod": "gpt-4o-2024-08-06"}
        self.words = words
        self.prompt_tokens = prompt_tokens
        # An older api-version that ignores stream_options: no usage chunk.
        self.omit_usage = omit_usage
        self.responses_api = ResponsesWire(self)

    def routes(self, app: web.Application) -> None:
        for kind in ("chat/completions", "completions", "embeddings"):
            app.router.add_post(f"/openai/deployments/{{deployment}}/{kind}", self.handle)
            app.router.add_post(f"/openai/v1/{kind}", self.handle)
        app.router.add_post("/openai/v1/responses", self.responses)
        app.router.add_post("/openai/responses", self.responses)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response(error_body(code, message), status=status)

    def fail_body(self, status: int) -> Any:
        return error_body(str(status), f"{self.name} injected failure")

    def _authorized(self, request: web.Request) -> bool:
        if request.headers.get("api-key") == self.api_key:
            return True
        return self.entra_token is not None and \
            request.headers.get("Authorization") == f"Bearer {self.entra_token}"

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        self.enter()
        try:
            denied = self._denied(request, body)
            if denied is not None:
                return denied
            return await self.responses_api.serve(request, body, self.deployments[body["model"]])
        finally:
            self.leave()

    def _denied(self, request: web.Request, body: Any) -> web.Response | None:
        """Azure's refusals of a Responses request: key, api-version, deployment."""
        if not self._authorized(request):
            return self._error(401, "401", "Access denied due to invalid subscription key.")
        if not request.path.startswith("/openai/v1/") and not request.query.get("api-version"):
            return self._error(404, "404", "Resource not found")
        if not isinstance(body, dict) or body.get("model") not in self.deployments:
            return self._error(404, "DeploymentNotFound", "The API deployment for this "
                               "resource does not exist.")
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        self.enter()
        try:
            if not self._authorized(request):
                return self._error(401, "401", "Access denied due to invalid subscription key "
                                   "or wrong API endpoint. Make sure to provide a valid key for "
                                   "an active subscription and use a correct regional API "
                                   "endpoint for your resource.")
            deployment = request.match_info.get("deployment") or (body or {}).get("model")
            if "deployment" in request.match_info and not request.query.get("api-version"):
                return self._error(404, "404", "Resource not found")
            if deployment not in self.deployments:
                return self._error(404, "DeploymentNotFound", "The API deployment for this "
                                   "resource does not exist. If you created the deployment "
                                   "within the last 5 minutes, please wait a moment and try "
                                   "again.")
            fault = self.take_fault()
            pre = await self.apply_pre_fault(fault)
            if pre is not None:
                return pre
            model = self.deployments[deployment]
            if request.path.endswith("/embeddings"):
                items = body["input"] if isinstance(body["input"], list) else [body["input"]]
                return web.json_response({
                    "object": "list", "model": model,
                    "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                             for i in range(len(items))],
                    "usage": {"prompt_tokens": 3 * len(items), "total_tokens": 3 * len(items)}})
            if body.get("stream"):
                return await self.stream(request, self._events(body, model), fault,
                                         error_body("500", "injected mid-stream error"))
            text = "".join(self.text())
            return web.json_response({
                "id": "chatcmpl-azure", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "fp_azure",
                "prompt_filter_results": _PROMPT_FILTER,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "content_filter_results": _FILTER,
                             "message": {"role": "assistant", "content": text, "refusal": None}}],
                "usage": self.usage(len(self.text()))})
        finally:
            self.leave()

    def text(self) -> list[str]:
        return hello_words(self.words)

    def usage(self, completion: int) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _events(self, body: dict[str, Any], model: str) -> list[bytes]:
        include = bool((body.get("stream_options") or {}).get("include_usage")) \
            and not self.omit_usage
        created = int(time.time())
        words = self.text()

        def chunk(choices: list[dict[str, Any]], usage: Any = "absent") -> bytes:
            obj: dict[str, Any] = {"id": "chatcmpl-azure", "object": "chat.completion.chunk",
                                   "created": created, "model": model,
                                   "system_fingerprint": "fp_azure", "choices": choices}
            if usage != "absent":
                obj["usage"] = usage
            return data_event(obj)

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None,
                     "content_filter_results": {} if finish else _FILTER}]

        usage_null = None if include else "absent"
        # Azure's first chunk, compact as the service writes it: only the prompt's filter
        # results, no choices (clients reading `chunk.choices[0]` trip on it).
        prompt_filter = b"data: " + json.dumps(
            {"choices": [], "created": 0, "id": "", "model": "", "object": "",
             "prompt_filter_results": _PROMPT_FILTER}, separators=(",", ":")).encode() + b"\n\n"
        events = [prompt_filter, chunk(choice({"role": "assistant", "content": ""}), usage_null)]
        events += [chunk(choice({"content": w}), usage_null) for w in words]
        events.append(chunk(choice({}, "stop"), usage_null))
        if include:
            events.append(chunk([], self.usage(len(words))))
        events.append(b"data: [DONE]\n\n")
        return events
