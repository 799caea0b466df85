"""The gateway's error family and the one place that renders OpenAI-format error JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping


class GatewayError(Exception):
    """An error a client sees. Subclasses set the HTTP status and OpenAI ``type``/``code``."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    status = 402
    type = "budget_exceeded"
    code = "budget_exceeded"


class ContextLengthExceeded(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"


class UpstreamError(GatewayError):
    """Every attempt failed; the message names what was tried."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


def error_json(exc: GatewayError) -> bytes:
    return json.dumps(exc.body(), ensure_ascii=False).encode()


def sse_error_event(exc: GatewayError) -> bytes:
    """A mid-stream failure: the status is already sent, so the error travels as one SSE event.

    The ``openai`` SDK raises ``APIError`` when a data line carries an ``error`` key, which is
    what a client needs to notice the stream ended badly rather than just short.
    """
    return b"data: " + error_json(exc) + b"\n\n"
