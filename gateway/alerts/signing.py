"""How a delivery proves it came from this gateway, and when a failed one is tried again.

Signature (docs/alerts.md, "Verifying a delivery"): the header

    X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

as Stripe signs its webhooks: the timestamp is inside the MAC, so a receiver that refuses
timestamps older than a few minutes also refuses a replayed delivery. Each attempt is signed
afresh (a retry an hour later carries a fresh `t`), over the same body and delivery id.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable

SIGNATURE_HEADER = "X-Gateway-Signature"


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>." + body` under `secret`."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Gateway-Signature` header value for one attempt."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: bytes, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
    """What a receiver does (docs/alerts.md shows the same in a few lines): parse the header,
    refuse a timestamp more than `tolerance_s` from `now`, compare in constant time. Any `v1`
    may match (room for a second signature while a secret is rotated)."""
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            t = int(value)
        elif name == "v1":
            candidates.append(value)
    if t is None or abs(now - t) > tolerance_s:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def backoff_s(retry: int, initial_s: float, max_s: float,
              rng: Callable[[], float] = random.random) -> float:
    """The wait before retry number `retry` (1 = the first retry): exponential, capped, with
    "equal jitter" — half the step fixed, half random — so receivers coming back from an outage
    are not hit by every replica's retries at the same instant, and a wait never collapses to
    zero. Within [step/2, step], step = min(max_s, initial_s * 2**(retry-1))."""
    step = min(max_s, initial_s * 2.0 ** min(retry - 1, 60))
    return step / 2 + rng() * step / 2
