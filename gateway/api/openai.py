"""OpenAI-compatible HTTP surface: thin handlers over the proxy."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.api.parse import api_key, openai_call, read_body, request_id
from gateway.call import Endpoint
from gateway.errors import GatewayError, ModelNotFound
from gateway.proxy import Proxy, StreamResponse
from gateway.responses import RawResponse, error_response

log = logging.getLogger("gateway.api")


def _endpoint(proxy: Proxy, endpoint: Endpoint) -> Callable[[Request], Any]:
    async def handler(request: Request) -> RawResponse | StreamResponse:
        try:
            limit = proxy.deps.runtime().policy.server.max_body_bytes
            raw = await read_body(request, limit)
            call = openai_call(endpoint, raw, request)
        except GatewayError as e:
            return error_response(e, {"x-request-id": request_id(request)})
        return await proxy.handle(call)

    return handler


def _model_obj(name: str, created: int, route: Any) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "model-gateway",
            "type": route.type}


def routes(proxy: Proxy) -> list[Route]:
    created = int(time.time())

    async def list_models(request: Request) -> RawResponse:
        try:
            principal = proxy.deps.auth.authenticate(api_key(request))
        except GatewayError as e:
            return error_response(e)
        models = proxy.deps.runtime().policy.models
        data = [_model_obj(n, created, r) for n, r in models.items() if principal.may_use(n)]
        return RawResponse(200, json.dumps({"object": "list", "data": data}).encode())

    async def get_model(request: Request) -> RawResponse:
        name = request.path_params["model"]
        try:
            principal = proxy.deps.auth.authenticate(api_key(request))
            route = proxy.deps.runtime().policy.models.get(name)
            if route is None or not principal.may_use(name):
                raise ModelNotFound(f"The model {name!r} does not exist or you do not have "
                                    "access to it. GET /v1/models lists the models you can use.")
        except GatewayError as e:
            return error_response(e)
        return RawResponse(200, json.dumps(_model_obj(name, created, route)).encode())

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
