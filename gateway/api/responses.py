"""OpenAI's Responses API: `POST /v1/responses` through the proxy, and the stored responses
(`GET`/`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`), per tenant.

Reference: https://platform.openai.com/docs/api-reference/responses
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.routing import Route

from gateway.api.bodies import check_responses
from gateway.api.json_body import parse_json_object
from gateway.api.parse import (
    SESSION_HEADERS,
    api_key,
    client_request_id,
    echo_id,
    header_map,
    read_body,
    session_header,
    trace_headers,
)
from gateway.api.responses_ingress import ResponsesIngress
from gateway.call import Call
from gateway.conversation import StoreUnavailable
from gateway.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.ids import new_id
from gateway.proxy import Proxy, StreamResponse
from gateway.responses import RawResponse, error_response


class _ResponseId(StringConvertor):
    """A stored response's id: any path segment but `input_tokens`, which is
    `POST /v1/responses/input_tokens` (api/count_tokens.py): without this, GET and DELETE of
    that path would reach these routes (a 404) instead of a 405 naming POST."""

    regex = "(?!input_tokens(?:/|$))[^/]+"


register_url_convertor("response_id", _ResponseId())


def responses_call(raw: bytes, request: Request,
                   session_headers: Sequence[str] = SESSION_HEADERS) -> Call:
    """Bytes of a `/v1/responses` request → a `Call` (ingress "responses"). The chat
    translation (`body`, `raw`) is filled in by `ResponsesIngress.prepare`, once the
    conversation it continues is known."""
    body = parse_json_object(raw)
    check_responses(body)
    headers = header_map(request)  # built once, as the chat ingress reads them
    user = body.get("user")
    prev = body.get("previous_response_id")
    stream = body.get("stream") is True
    rid = new_id()
    return Call(
        endpoint="chat", model=body["model"], body={}, raw=b"", stream=stream,
        request_id=rid, client_request_id=client_request_id(headers),
        api_key=api_key(request), ingress="responses", native_body=body, native_raw=raw,
        # The codec builds Responses' usage from the chat stream's usage chunk. The response's
        # id is the request's (unique already): the ledger's record and the stored response
        # name each other.
        client_include_usage=stream, response_id="resp_" + rid,
        # One conversation stays on one backend while it can (prefix caches).
        session=headers.get("x-session-id") or (user if isinstance(user, str) else None)
        or (prev if isinstance(prev, str) else None),
        headers={**trace_headers(request), **session_header(request, session_headers)},
    )


def routes(proxy: Proxy, ingress: ResponsesIngress) -> list[Route]:
    async def create(request: Request) -> RawResponse | StreamResponse:
        try:
            rt = proxy.deps.runtime()
            raw = await read_body(request, rt.policy.server.max_body_bytes)
            call = responses_call(raw, request, rt.router.session_headers)
        except GatewayError as e:
            return error_response(e, {"x-request-id": echo_id(request.headers)})
        call.receive = request.receive  # a queued request notices its client leave
        return await proxy.handle(call)

    async def stored(request: Request, fn: Any) -> RawResponse:
        rid = request.path_params["response_id"]
        try:
            principal = proxy.deps.auth.authenticate(api_key(request))
            try:
                return await fn(principal.tenant, rid)  # type: ignore[no-any-return]
            except StoreUnavailable:
                raise ServiceUnavailable("Stored responses cannot be read right now; retry "
                                         "shortly.", headers={"Retry-After": "5"}) from None
        except GatewayError as e:
            return error_response(e)

    def missing(rid: str) -> NotFound:
        # Another tenant's id reads exactly as an id that does not exist.
        return NotFound(f"Response with id '{rid}' not found.", param="response_id")

    async def retrieve(request: Request) -> RawResponse:
        async def go(tenant: str, rid: str) -> RawResponse:
            found = await ingress.store.get(tenant, rid)
            if found is None:
                raise missing(rid)
            return RawResponse(200, to_json(found.response))
        return await stored(request, go)

    async def delete(request: Request) -> RawResponse:
        async def go(tenant: str, rid: str) -> RawResponse:
            if not await ingress.store.delete(tenant, rid):
                raise missing(rid)
            return RawResponse(200, to_json({"id": rid, "object": "response", "deleted": True}))
        return await stored(request, go)

    async def items(request: Request) -> RawResponse:
        q = request.query_params

        async def go(tenant: str, rid: str) -> RawResponse:
            limit = _int(q.get("limit"), 20, 1, 100, "limit")
            order = q.get("order", "desc")
            if order not in ("asc", "desc"):
                raise InvalidRequest("order must be asc or desc.", param="order")
            page = await ingress.store.input_items(
                tenant, rid, after=q.get("after"), before=q.get("before"), limit=limit,
                order="asc" if order == "asc" else "desc")
            if page is None:
                raise missing(rid)
            data, more = page
            return RawResponse(200, to_json({
                "object": "list", "data": data, "has_more": more,
                "first_id": data[0].get("id") if data else None,
                "last_id": data[-1].get("id") if data else None}))
        return await stored(request, go)

    out = []
    for prefix in ("/v1", ""):
        out += [
            Route(f"{prefix}/responses", create, methods=["POST"]),
            Route(prefix + "/responses/{response_id:response_id}", retrieve, methods=["GET"]),
            Route(prefix + "/responses/{response_id:response_id}", delete, methods=["DELETE"]),
            Route(prefix + "/responses/{response_id:response_id}/input_items", items,
                  methods=["GET"]),
        ]
    return out


def _int(text: str | None, default: int, low: int, high: int, param: str) -> int:
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidRequest(f"{param} must be an integer from {low} to {high}.", param=param)
    return int(text)
