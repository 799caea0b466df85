"""`cost`: the deployment this call is expected to cost least on, first.

Expected cost = estimated prompt tokens × input price + expected completion tokens × output
price, from the deployment's price in effect today (`pricing` is effective-dated). The prompt is
estimated at 4 characters per token (ordering needs ratios, not exact counts); the completion
at the call's `max_tokens`/`max_completion_tokens`, else `DEFAULT_COMPLETION_TOKENS`.

A self-hosted deployment (`gpu_cost_per_hour`) is paid for whether used or not: its marginal
cost is 0 until it is saturated — a reported queue above `SATURATED_WAITING`, or, with no fresh
scrape, more than `SATURATED_IN_FLIGHT` in flight — and then it goes after every unsaturated
deployment, so overflow spills to paid ones instead of queueing. A deployment with no price at
all costs 0, as accounting counts it. Ties go to the higher weight, then the less busy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from gateway.call import Call
from gateway.policy.models import Deployment, Price
from gateway.providers.base import Target
from gateway.routing.base import Signals
from gateway.routing.strategies.pool import Rotation, outstanding, routable

DEFAULT_COMPLETION_TOKENS = 256
SATURATED_WAITING = 4
SATURATED_IN_FLIGHT = 64
_CHARS_PER_TOKEN = 4


def _today() -> date:
    return datetime.now(UTC).date()


def price_on(pricing: Sequence[Price], day: date) -> Price | None:
    """The latest price whose `effective_from` is not after `day` (undated ones count as
    earliest); None when the deployment has no price in effect."""
    best: Price | None = None
    best_from = ""
    iso = day.isoformat()
    for p in pricing:
        since = p.effective_from or ""
        if since <= iso and (best is None or since >= best_from):
            best, best_from = p, since
    return best


def _prompt_chars(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        n = 0
        for m in messages:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                n += len(c)
            elif isinstance(c, list):
                n += sum(len(p.get("text", "")) for p in c
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
        return n
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(p) if isinstance(p, str) else _CHARS_PER_TOKEN for p in prompt)
    return 0


def _completion_tokens(body: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and v > 0:
            return v
    return DEFAULT_COMPLETION_TOKENS


class Cheapest:
    """Lowest expected cost of this call first; saturated self-hosted deployments last."""

    def __init__(self, seed: int | None = None, *,
                 today: Callable[[], date] = _today) -> None:
        self._rotation = Rotation()
        self._today = today
        # (input, output) USD per token by deployment id, for the day they were looked up on.
        self._prices: dict[str, tuple[float, float]] = {}
        self._day: date | None = None

    def _per_token(self, d: Deployment) -> tuple[float, float]:
        price = self._prices.get(d.id)
        if price is None:
            p = price_on(d.pricing, self._day or _today())
            price = (0.0, 0.0) if p is None else (float(p.input) / 1e6, float(p.output) / 1e6)
            self._prices[d.id] = price
        return price

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        live = routable(candidates)
        rot = self._rotation
        if len(live) < 2:
            return live
        day = self._today()
        if day != self._day:  # prices are effective-dated: look them up again each day
            self._day, self._prices = day, {}
        prompt = _prompt_chars(call.body) / _CHARS_PER_TOKEN
        completion = _completion_tokens(call.body)

        def rank(t: Target) -> tuple[bool, float, float, int, int]:
            d = t.deployment
            load = signals.load(t.id)
            busy = outstanding(load)
            if d.gpu_cost_per_hour is not None:
                saturated = (load.waiting > SATURATED_WAITING if load.waiting is not None
                             else load.in_flight > SATURATED_IN_FLIGHT)
                return (saturated, 0.0, -d.weight, busy, rot.recency(t))
            inp, out = self._per_token(d)
            return (False, prompt * inp + completion * out, -d.weight, busy, rot.recency(t))

        return rot.chosen(sorted(live, key=rank))
