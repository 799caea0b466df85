"""Turn an HTTP request into a `Call`: read the body under the size limit, parse it once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence

from starlette.requests import ClientDisconnect, Request

from gateway.api.bodies import check_openai
from gateway.api.json_body import parse_json_object
from gateway.call import Call, Endpoint
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.ids import new_id

__all__ = ["api_key", "client_request_id", "echo_id", "header_map", "openai_call",
           "parse_json_object", "read_body"]

log = logging.getLogger("gateway.api")

# The session header every ingress keeps; the policy can name more (`Router.session_headers`).
SESSION_HEADERS = ("x-session-id",)
_HEADERS = "gateway.headers"  # the request's header map, kept in its ASGI scope


def header_map(request: Request) -> dict[str, str]:
    """The request's headers as a dict, built once per request. Starlette's `Headers.get`
    scans every header on each call, and one proxied request asks for about nine. Names come
    lowercased from uvicorn; of a repeated header the first one wins, as with `Headers.get`."""
    scope = request.scope
    got: dict[str, str] | None = scope.get(_HEADERS)
    if got is None:
        got = scope[_HEADERS] = {k.decode("latin-1"): v.decode("latin-1")
                                 for k, v in reversed(scope["headers"])}
    return got


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes (413 past it). A client that stalls is the connection's
    business (server.body_timeout_s: `gateway/connection.py` answers 408); one that leaves
    mid-body is an info line and a 499 nobody reads, never an error with a traceback."""
    declared = header_map(request).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(int(declared), limit))
    chunks: list[bytes] = []
    size = 0
    stream: AsyncIterator[bytes] = request.stream()
    try:
        # uvicorn enforces a declared length; the running count bounds a chunked body.
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(_too_large(size, limit))
            chunks.append(chunk)
    except ClientDisconnect:
        log.info("client disconnected before sending the whole request body", extra={
            "fields": {"path": request.scope["path"], "bytes_received": size}})
        raise GatewayError("The client closed the connection before sending the whole "
                           "request body.", status=499, type="invalid_request_error",
                           code="client_closed_request") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (f"Request body is {size} bytes, over this gateway's limit of {limit} bytes "
            "(server.max_body_bytes). Send a smaller request.")


def api_key(request: Request) -> str | None:
    headers = header_map(request)
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key") or headers.get("api-key")


def client_request_id(headers: Mapping[str, str]) -> str | None:
    """The client's own `x-request-id`, kept beside the ledger's key and echoed back. Never
    the ledger's key itself: clients reuse ids, and a reused id must not merge records."""
    rid = headers.get("x-request-id")
    if rid and len(rid) <= 128 and rid.isascii() and rid.isprintable():
        return rid
    return None


def echo_id(headers: Mapping[str, str]) -> str:
    """The `x-request-id` a response carries: the client's, else a fresh one."""
    return client_request_id(headers) or new_id()


def openai_call(endpoint: Endpoint, raw: bytes, request: Request,
                session_headers: Sequence[str] = SESSION_HEADERS) -> Call:
    body = parse_json_object(raw)
    check_openai(endpoint, body)
    stream = body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    user = body.get("user")
    headers = header_map(request)
    return Call(
        endpoint=endpoint, model=body["model"], body=body, raw=raw, stream=stream,
        request_id=new_id(), client_request_id=client_request_id(headers),
        api_key=api_key(request), client_include_usage=include_usage,
        session=headers.get("x-session-id") or (user if isinstance(user, str) else None),
        headers={**trace_headers(request), **session_header(request, session_headers)},
    )


def trace_headers(request: Request) -> dict[str, str]:
    """W3C trace context, for tracing, and `Cache-Control`, for the response cache
    (gateway/stages/cache.py): the OpenAI and Responses ingresses keep these; the Anthropic
    ingress keeps every header."""
    headers = header_map(request)
    cc = headers.get("cache-control")
    tp = headers.get("traceparent")
    if tp is None:
        return {} if cc is None else {"cache-control": cc}
    ts = headers.get("tracestate")
    out = {"traceparent": tp, "tracestate": ts} if ts else {"traceparent": tp}
    if cc is not None:
        out["cache-control"] = cc
    return out


def session_header(request: Request, names: Sequence[str] = SESSION_HEADERS) -> dict[str, str]:
    """The session headers as sent (`x-session-id`, and those the policy's `session_key`s
    name: `Router.session_headers`), for a model whose `session_key` is a header
    (gateway/routing/affinity.py): `Call.session` alone cannot tell it from `user`."""
    got = header_map(request)
    out: dict[str, str] = {}
    for name in names:
        v = got.get(name)
        if v is not None:
            out[name] = v
    return out
