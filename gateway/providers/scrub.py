"""Remove secrets and internal addresses from upstream text before a client or a log sees it.

Upstream error messages are kept (they say what went wrong) but may echo what the gateway sent:
its key, the URL it called with `?key=`, the host behind a load balancer. Each pattern below is
one such leak seen in provider messages; the configured key itself is removed verbatim first.
"""

from __future__ import annotations

import re

_PATTERNS = (
    # OpenAI-style and Anthropic (sk-ant-…) keys, and our own.
    (re.compile(r"\b(sk|gw|pk|rk)-[A-Za-z0-9_\-]{8,}"), "[redacted-key]"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), "[redacted-key]"),  # Google API keys
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._\-]{12,}"), r"\1 [redacted]"),
    # Key headers echoed back: `x-api-key: …`, `api-key=…`, `x-goog-api-key": "…`.
    (re.compile(r"(?i)\b((?:x-goog-|x-)?api[-_]key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"),
     r"\1\2[redacted]"),
    (re.compile(r"(?i)([?&](key|token|sig|signature)=)[^&\s\"']+"), r"\1[redacted]"),
    # Internal URLs name hosts a client must not learn.
    (re.compile(r"(?i)\b(https?|wss?)://[^\s\"'<>]+"), "[upstream-url]"),
    # Bare internal addresses: IPv4 (with port), host:port, cluster-internal names.
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b"), "[upstream-host]"),
    (re.compile(r"(?i)\b(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+):\d{2,5}\b"), "[upstream-host]"),
    (re.compile(r"(?i)\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:internal|local|lan|corp|svc)\b"),
     "[upstream-host]"),
)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    for s in secrets:
        if s and len(s) >= 6:
            text = text.replace(s, "[redacted-key]")
    for pat, rep in _PATTERNS:
        text = pat.sub(rep, text)
    return text
