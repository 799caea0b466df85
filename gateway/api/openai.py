"""OpenAI-compatible HTTP surface: thin handlers over the proxy."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.api.model_list import model_obj
from gateway.api.parse import api_key, echo_id, openai_call, read_body
from gateway.call import Endpoint
from gateway.errors import GatewayError, ModelNotFound
from gateway.proxy import Proxy, StreamResponse
from gateway.responses import RawResponse, error_response

log = logging.getLogger("gateway.api")


def _endpoint(proxy: Proxy, endpoint: Endpoint) -> Callable[[Request], Any]:
    async def handler(request: Request) -> RawResponse | StreamResponse:
        try:
            rt = proxy.deps.runtime()
            raw = await read_body(request, rt.policy.server.max_body_bytes)
            call = openai_call(endpoint, raw, request, rt.router.session_headers)
        except GatewayError as e:
            return error_response(e, {"x-request-id": echo_id(request.headers)})
        call.receive = request.receive  # a queued request notices its client leave
        return await proxy.handle(call)

    return handler


def routes(proxy: Proxy) -> list[Route]:
    created = int(time.time())

    async def list_models(request: Request) -> RawResponse:
        try:
            principal = proxy.deps.auth.authenticate(api_key(request))
        except GatewayError as e:
            return error_response(e)
        rt, now = proxy.deps.runtime(), datetime.now(UTC)
        data = [model_obj(n, created, r, rt.prices, principal.tenant, now)
                for n, r in rt.policy.models.items() if principal.may_use(n)]
        return RawResponse(200, json.dumps({"object": "list", "data": data}).encode())

    async def get_model(request: Request) -> RawResponse:
        name = request.path_params["model"]
        try:
            principal = proxy.deps.auth.authenticate(api_key(request))
            rt = proxy.deps.runtime()
            route = rt.policy.models.get(name)
            if route is None or not principal.may_use(name):
                raise ModelNotFound(f"The model {name!r} does not exist or you do not have "
                                    "access to it. GET /v1/models lists the models you can use.")
        except GatewayError as e:
            return error_response(e)
        obj = model_obj(name, created, route, rt.prices, principal.tenant, datetime.now(UTC))
        return RawResponse(200, json.dumps(obj).encode())

    return [
        Route("/v1/chat/completions", _endpoint(proxy, "chat"), methods=["POST"]),
        Route("/v1/completions", _endpoint(proxy, "completions"), methods=["POST"]),
        Route("/v1/embeddings", _endpoint(proxy, "embeddings"), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        # Clients configured with a base URL without /v1 still work.
        Route("/chat/completions", _endpoint(proxy, "chat"), methods=["POST"]),
        Route("/completions", _endpoint(proxy, "completions"), methods=["POST"]),
        Route("/embeddings", _endpoint(proxy, "embeddings"), methods=["POST"]),
    ]
