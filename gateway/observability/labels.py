"""Label values for metrics: stable codes, bounded sets, provider facts.

A label value is part of a series' identity: free text in it ("HTTP 503: Service
Unavailable", an OS error message) splits one series into many and breaks every dashboard
query that names the value. Everything that becomes a label goes through here first.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

# What `UpstreamFailure.reason` and the proxy's attempt reasons start with → the code.
_REASONS = {
    "connect_error": "connect",
    "timeout": "timeout",
    "disconnected": "disconnected",
    "upstream_failure": "upstream_failure",
    "midstream": "midstream",
    "the stream ended before any data": "empty_stream",
}
_HTTP = re.compile(r"HTTP (\d{3})")
_SLUG = re.compile(r"[^a-z0-9]+")

# Provider `kind` → gen_ai.provider.name where the conventions' well-known value differs from
# the kind (the same table tracing.py uses for spans). OpenAI-compatible APIs report "openai":
# server.address says which service it really was.
PROVIDER_NAME = {"azure": "azure.ai.openai", "gemini": "gcp.gemini",
                 "openai-compatible": "openai"}

# Our endpoint → gen_ai.operation.name (the conventions' well-known values).
OPERATION = {"chat": "chat", "messages": "chat", "responses": "chat",
             "completions": "text_completion", "embeddings": "embeddings"}

OTHER = "_other"


def reason_code(reason: str | None) -> str:
    """`HTTP 503: …` → `http_503`; `connect_error: cannot connect: …` → `connect`;
    `timeout: no first token within 30 s` → `timeout`. Unknown text becomes a short slug of
    its first word, never the message itself."""
    if not reason:
        return "unknown"
    m = _HTTP.match(reason)
    if m:
        return f"http_{m.group(1)}"
    head = reason.split(":", 1)[0].strip()
    code = _REASONS.get(head)
    if code is not None:
        return code
    return _SLUG.sub("_", head.lower()).strip("_")[:32] or "unknown"


class LabelCap:
    """At most `limit` distinct values keep their own label; later ones read `_other`.

    First come, first kept: the set only grows until it is full, so a value never moves
    between series (a tenant's counter that jumped to `_other` mid-month would look like a
    reset). The map is the cache, so a known value costs one dict lookup."""

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        out = self._seen.get(value)
        if out is not None:
            return out
        out = value if len(self._seen) < self.limit else OTHER
        if out is not OTHER:
            self._seen[value] = out
        return out

    def __len__(self) -> int:
        return len(self._seen)


def provider_facts(provider: Any) -> tuple[str, str]:
    """(gen_ai.provider.name, server.address) of a provider config; the address is "" when
    the policy does not say it (a `local` backend before it started)."""
    kind = str(getattr(provider, "kind", None) or "unknown")
    host = ""
    base = getattr(provider, "base_url", "") or ""
    if base:
        try:
            host = urlsplit(base).hostname or ""
        except ValueError:
            host = ""
    return PROVIDER_NAME.get(kind, kind), host
