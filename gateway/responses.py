"""Lean ASGI responses for the hot path (no per-response header normalisation work)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from gateway.errors import GatewayError, error_json

_JSON = (b"content-type", b"application/json")


class RawResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None,
                 content_type: bytes = b"application/json") -> None:
        self.status = status
        self.body = body
        h = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if headers:
            h += [(k.encode(), v.encode()) for k, v in headers.items()]
        self.headers = h

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class ErrorCodec(Protocol):
    def error_body(self, exc: GatewayError) -> bytes: ...


def error_response(exc: GatewayError, headers: Mapping[str, str] | None = None,
                   codec: ErrorCodec | None = None) -> RawResponse:
    """The one way an error leaves the gateway: OpenAI's shape, or the ingress's own."""
    body = codec.error_body(exc) if codec is not None else error_json(exc)
    merged = dict(exc.headers)
    if headers:
        merged.update(headers)
    return RawResponse(exc.status, body, merged)
