"""Anthropic-compatible ingress: `POST /v1/messages` through the same policy and routing."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.api.anthropic import parse_messages_request
from gateway.api.anthropic_codec import CODEC
from gateway.api.parse import echo_id, read_body
from gateway.errors import GatewayError
from gateway.proxy import Proxy, StreamResponse
from gateway.responses import RawResponse, error_response


def routes(proxy: Proxy) -> list[Route]:
    async def messages(request: Request) -> RawResponse | StreamResponse:
        try:
            limit = proxy.deps.runtime().policy.server.max_body_bytes
            raw = await read_body(request, limit)
            call = parse_messages_request(raw, request)
        except GatewayError as e:
            return error_response(e, {"x-request-id": echo_id(request.headers)}, CODEC)
        call.receive = request.receive  # a queued request notices its client leave
        return await proxy.handle(call)

    return [Route("/v1/messages", messages, methods=["POST"])]
