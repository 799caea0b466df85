"""Upstream HTTP errors, the parts every adapter classifies the same way: the error class of a
status, the message a client may see, and how long the upstream asked us to wait."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.providers.base import ErrorKind
from gateway.providers.scrub import scrub


def error_kind(status: int, text: str, context_markers: tuple[str, ...], *,
               context_statuses: tuple[int, ...] = (400, 413),
               retry_statuses: tuple[int, ...] = (408, 409, 429)) -> ErrorKind:
    """The class of an upstream error; `text` is its lower-cased message, searched for the
    provider's ways of saying the prompt is too long."""
    if status in context_statuses and any(m in text for m in context_markers):
        return ErrorKind.CONTEXT_LENGTH
    if status in retry_statuses or status >= 500:
        return ErrorKind.RETRYABLE
    if status in (401, 403):
        return ErrorKind.CONFIG  # our upstream key or account, not the client's request
    return ErrorKind.CLIENT


def body_text(body: bytes) -> str:
    """The start of an error body that is not the provider's JSON (a proxy's HTML page)."""
    return body[:500].decode("utf-8", "replace").strip()


def client_message(message: str, secrets: tuple[str, ...], status: int) -> str:
    return scrub(message, secrets) or f"upstream returned HTTP {status}"


def parse_retry_after(headers: Mapping[str, str], *, ms_header: bool = False) -> float | None:
    """Seconds from `Retry-After` (delta-seconds; an HTTP date is not used). With `ms_header`,
    OpenAI's and Azure's `retry-after-ms` first, which is finer."""
    if ms_header:
        v = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
        if v:
            try:
                return float(v) / 1000
            except ValueError:
                pass
    v = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(v) if v else None
    except ValueError:
        return None
