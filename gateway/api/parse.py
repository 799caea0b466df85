"""Turn an HTTP request into a `Call`: read the body under the size limit, parse it once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from gateway.call import Call, Endpoint
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.ids import new_id

_REQUIRED: dict[str, str] = {"chat": "messages", "completions": "prompt", "embeddings": "input"}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(int(declared), limit))
    if declared is not None and declared.isdigit():
        return await request.body()  # uvicorn enforces the declared length
    chunks: list[bytes] = []
    size = 0
    stream: AsyncIterator[bytes] = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (f"Request body is {size} bytes, over this gateway's limit of {limit} bytes "
            "(server.max_body_bytes). Send a smaller request.")


def api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id")
    if rid and len(rid) <= 128 and rid.isascii() and rid.isprintable():
        return rid
    return new_id()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}. "
                             "Send a JSON object with Content-Type: application/json.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def openai_call(endpoint: Endpoint, raw: bytes, request: Request) -> Call:
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter (a model name string).",
                             param="model", code="missing_required_parameter")
    field = _REQUIRED[endpoint]
    if field not in body:
        raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field,
                             code="missing_required_parameter")
    stream = body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    user = body.get("user")
    session = request.headers.get("x-session-id") or (user if isinstance(user, str) else None)
    return Call(
        endpoint=endpoint, model=model, body=body, raw=raw, stream=stream,
        request_id=request_id(request), api_key=api_key(request),
        client_include_usage=include_usage, session=session,
        headers=_trace_headers(request),
    )


def _trace_headers(request: Request) -> dict[str, str]:
    """W3C trace context, for tracing (the Anthropic ingress keeps every header)."""
    tp = request.headers.get("traceparent")
    if tp is None:
        return {}
    ts = request.headers.get("tracestate")
    return {"traceparent": tp, "tracestate": ts} if ts else {"traceparent": tp}
