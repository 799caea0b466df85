"""Structured (JSON) logs. Never log keys or bodies; format only when the level is on."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging() -> None:
    """Idempotent: one handler on the `gateway` logger, level from GATEWAY_LOG_LEVEL."""
    logger = logging.getLogger("gateway")
    if any(getattr(h, "_gateway", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._gateway = True  # type: ignore[attr-defined]
    if os.environ.get("GATEWAY_LOG_FORMAT", "json") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper())
    logger.propagate = False


_requests = logging.getLogger("gateway.requests")


def log_request(record: Any) -> None:
    """One line per finished request (after settlement, off the request path). Never keys or
    bodies: the key id, not the key."""
    usage = [a.usage for a in record.attempts if a.usage is not None]
    _requests.info("request", extra={"fields": {
        "request_id": record.request_id, "tenant": record.tenant, "key_id": record.key_id,
        "model": record.model, "endpoint": record.endpoint, "stream": record.stream,
        "status": record.status, "error_code": record.error_code,
        "latency_ms": round(record.latency_ms, 2),
        "ttft_ms": round(record.ttft_ms, 2) if record.ttft_ms is not None else None,
        "attempts": [f"{a.deployment}:{a.outcome}" for a in record.attempts],
        "prompt_tokens": sum(u.prompt_tokens for u in usage),
        "completion_tokens": sum(u.completion_tokens for u in usage),
        "cost_usd": str(record.cost_usd),
        "client_disconnected": record.client_disconnected,
    }})
