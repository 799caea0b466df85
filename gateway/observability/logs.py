"""Structured (JSON) logs. Never log keys or bodies; format only when the level is on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

import msgspec


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
    if _handler(logger) is not None:
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


def adopt_uvicorn_logs() -> None:
    """uvicorn's own messages through the gateway's handler, so the whole log is one format
    (uvicorn then runs with `log_config=None`; its levels still come from `--log-level`)."""
    configure_logging()
    handler = _handler(logging.getLogger("gateway"))
    uvicorn = logging.getLogger("uvicorn")
    if handler is not None and handler not in uvicorn.handlers:
        uvicorn.addHandler(handler)
    uvicorn.propagate = False


def _handler(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, "_gateway", False)), None)


_requests = logging.getLogger("gateway.requests")


def request_fields(record: Any) -> dict[str, Any]:
    """What one request's log line says. Never keys or bodies: the key id, not the key."""
    usage = [a.usage for a in record.attempts if a.usage is not None]
    return {
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
    }


_ENCODER = msgspec.json.Encoder(enc_hook=str)


def _encode_line(line: dict[str, Any]) -> str:
    """One request line as JSON. msgspec encodes it in a ninth of `json.dumps`'s time (this
    ran once per request, ~4.5 µs); a line with non-ASCII text (a tenant's or model's name)
    goes through `json.dumps`, whose escapes keep the log ASCII as every other line is."""
    data = _ENCODER.encode(line)
    return data.decode() if data.isascii() else json.dumps(line, default=str)


class RequestLog:
    """One JSON line per finished request, written in batches.

    Through `logging`, a line cost ~30 µs of the gateway's core under load (a LogRecord, a
    lock, a write and a flush per line: docs/benchmarks.md); here lines are formatted as
    `JsonFormatter` would and written together at most every `interval_s`. Runs after
    settlement, never on the response path. With GATEWAY_LOG_FORMAT=text it defers to
    `logging` as every other line does.
    """

    def __init__(self, stream: Any = None, interval_s: float = 0.2, max_lines: int = 512) -> None:
        self._stream = stream
        self._interval = interval_s
        self._max = max_lines
        self._lines: list[str] = []
        self._scheduled = False
        self._json = os.environ.get("GATEWAY_LOG_FORMAT", "json") == "json"

    def enabled(self) -> bool:
        return _requests.isEnabledFor(logging.INFO)

    def emit(self, record: Any) -> None:
        fields = request_fields(record)
        if not self._json:
            _requests.info("request", extra={"fields": fields})
            return
        now = time.time()
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                + f".{int(now * 1000) % 1000:03d}Z",
                "level": "info", "logger": "gateway.requests", "msg": "request", **fields}
        self._lines.append(_encode_line(line))
        if len(self._lines) >= self._max:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not break settlement
