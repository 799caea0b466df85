"""Charging cache churn: what a request costs flow control when the KV it writes is never read
back (`flow_control.single_use_kv_weight`).

Fair shares count work (gateway/flow/cost.py), but a backend's prefix cache is shared too, and
a tenant's new tokens push everyone's idle cached prefixes out of it. A chat tenant reads back
what it writes (each turn re-sends the conversation so far: its KV was worth keeping); a tenant
sending single turns never does, so at an equal share of the work it only evicts — in the
simulator, the neighbour's conversation histories, and with them its TTFT tail
(docs/routing.md, "The flood experiment"). So each tenant's recent requests are summed, decayed
per request: the tokens they re-sent from earlier turns (`reread_tokens`) against the tokens
they added (their cost). Reuse is the first ÷ the second, at most 1, and a request's cost is
multiplied by `1 + (weight - 1) × (1 - reuse)`: a tenant that reads back at least as much as
it writes pays the plain cost, one that never does pays `weight` times it — as if its weight
were divided by `weight`. A tenant is judged as a whole: one that mixes a chat with a flood is
charged by the mix.

The sums are per pool (its caches), bounded to the `max_tenants` seen last; a tenant seen for
the first time is judged on that one request. Nothing is kept while the weight is 1 and
nothing else asks (`track`: `flow_control.single_use_backends`, gateway/flow/confine.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.flow.cost import request_cost, reread_tokens

DECAY = 1.0 / 128
"""Each request keeps 1 - DECAY of a tenant's sums: they follow its last few hundred requests,
so a tenant that turns into a flood is charged as one within a few hundred requests."""
MAX_TENANTS = 10_000


class KvReuse:
    """Per-tenant reuse of one pool, and the cost it implies."""

    def __init__(self, weight: float = 1.0, max_tenants: int = MAX_TENANTS) -> None:
        self.weight = weight
        self.track = False
        """Keep the sums even at weight 1: confinement reads `reuse`."""
        self.max_tenants = max_tenants
        self._sums: dict[str, tuple[float, float]] = {}  # tenant -> (re-read, written)

    def cost(self, tenant: str, body: Mapping[str, Any], expected_output_tokens: int) -> float:
        """The cost flow control charges `tenant` for the request `body`."""
        cost = request_cost(body, expected_output_tokens)
        if self.weight <= 1.0 and not self.track:
            return cost
        return self.charge(tenant, cost, reread_tokens(body))

    def charge(self, tenant: str, cost: float, reread: int) -> float:
        """Count a request that adds `cost` tokens and re-sends `reread`; returns its charge."""
        keep = 1.0 - DECAY
        sums = self._sums
        r, w = sums.pop(tenant, (0.0, 0.0))  # re-inserted last: the dict's order is recency
        r = r * keep + reread
        w = w * keep + cost
        sums[tenant] = (r, w)
        if len(sums) > self.max_tenants:
            del sums[next(iter(sums))]
        return cost * (1.0 + (self.weight - 1.0) * (1.0 - self.reuse(tenant)))

    def reuse(self, tenant: str) -> float:
        """The tenant's recent re-read ÷ written tokens, at most 1 (1 for a tenant not seen)."""
        r, w = self._sums.get(tenant, (0.0, 0.0))
        return 1.0 if w <= 0.0 else min(1.0, r / w)
