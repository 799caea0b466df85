"""What a client sees of the limits: `x-ratelimit-*` headers, `Retry-After`, and the messages.

Both backends report each rate rule as a `RateState`; this module picks the binding one per
header family, so the memory and Redis limiters answer identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.errors import RateLimited
from gateway.limits.rules import WINDOW_S, ConcurrencyRule, RateRule

_UNITS = {"rpm": "requests per minute", "tpm": "tokens per minute"}
_FAMILY = {"rpm": "requests", "tpm": "tokens"}


@dataclass(frozen=True, slots=True)
class RateState:
    """One rate rule after admission (or after the refusal): what is left and when."""

    rule: RateRule
    ok: bool
    # Units left in the bucket (after this request when admitted).
    remaining: int
    # Seconds until the bucket is full again.
    reset_s: float
    # Seconds until this request would fit (0 when admitted).
    retry_s: float
    # Units this request asked for (1 for requests, the token estimate for tokens).
    cost: int = 1
    # The request alone needs more than the bucket can ever hold.
    too_large: bool = False


def format_reset(seconds: float) -> str:
    """Go's Duration.String at millisecond precision, as OpenAI writes it: 20ms, 1s, 6m0s."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    sec = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{h}h" if h else ""
    if h or m:
        out += f"{m}m"
    return f"{out}{sec}s"


def retry_after(seconds: float) -> int:
    """`Retry-After` is whole seconds; round up so a client that obeys it is admitted."""
    return max(1, math.ceil(seconds - 1e-9))


# The three header names of each family, built once (this runs for every admitted request).
_NAMES = {kind: (f"x-ratelimit-limit-{family}", f"x-ratelimit-remaining-{family}",
                 f"x-ratelimit-reset-{family}") for kind, family in _FAMILY.items()}


def rate_headers(states: Sequence[RateState]) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the binding rules."""
    # The binding (tightest) rule of each family: a refused one first, then the fewest units
    # left, then the longest reset; on a tie the first. One pass, no list per family.
    binding: dict[str, tuple[tuple[bool, int, float], RateState]] = {}
    for s in states:
        key = (s.ok, s.remaining, -s.reset_s)
        best = binding.get(s.rule.kind)
        if best is None or key < best[0]:
            binding[s.rule.kind] = (key, s)
    headers: dict[str, str] = {}
    for kind, (limit, remaining, reset) in _NAMES.items():
        found = binding.get(kind)
        if found is None:
            continue
        s = found[1]
        headers[limit] = str(s.rule.limit)
        headers[remaining] = str(max(0, s.remaining))
        headers[reset] = format_reset(s.reset_s)
    return headers


def rate_limited(states: Sequence[RateState],
                 concurrency: ConcurrencyRule | None = None) -> RateLimited:
    """The 429 for a refused admission, naming the limit that keeps the request out longest."""
    # Nothing was reserved: buckets that would have admitted show what they hold, not what
    # they would have held after this request.
    states = [s if not s.ok else replace(
        s, remaining=min(s.rule.limit, s.remaining + s.cost),
        reset_s=max(0.0, s.reset_s - s.cost * WINDOW_S / s.rule.limit)) for s in states]
    headers = rate_headers(states)
    refused = [s for s in states if not s.ok]
    if refused:
        worst = max(refused, key=lambda s: (s.too_large, s.retry_s))
        wait_s = worst.retry_s
        rule = worst.rule
        if worst.too_large:
            # Waiting cannot help; OpenAI answers this case with a 429 as well.
            message = (f"Request too large for {rule.scope.describe()}: it may use up to "
                       f"{worst.cost} tokens (prompt + max_tokens), more than the limit of "
                       f"{rule.limit} {_UNITS[rule.kind]}. Lower max_tokens or shorten the "
                       "prompt.")
        else:
            message = (f"Rate limit reached for {rule.scope.describe()}: {rule.limit} "
                       f"{_UNITS[rule.kind]}. Retry after {retry_after(wait_s)} s.")
    else:
        assert concurrency is not None, "a refusal names a rate rule or a concurrency rule"
        # When a slot frees is unknown (it depends on a response ending): ask for 1 s.
        wait_s = 1.0
        message = (f"Rate limit reached for {concurrency.scope.describe()}: "
                   f"{concurrency.limit} concurrent requests. Retry after 1 s.")
    headers["retry-after"] = str(retry_after(wait_s))
    # The openai SDKs read retry-after-ms first: it lets them come back sooner than a second.
    headers["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
    return RateLimited(message, headers=headers)
