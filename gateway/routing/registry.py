"""Policy strategy names → strategy classes, resolved once when the router is built."""

from __future__ import annotations

from collections.abc import Callable

from gateway.routing.base import Strategy
from gateway.routing.strategies.cost import Cheapest
from gateway.routing.strategies.latency import LowestLatency
from gateway.routing.strategies.least_busy import LeastBusy
from gateway.routing.strategies.prefix_affinity import PrefixAffinity
from gateway.routing.strategies.prefix_load import PrefixLoad
from gateway.routing.strategies.weighted import WeightedRoundRobin

# Keys are the `strategy:` values of `gateway.policy.models.Strategy`.
STRATEGIES: dict[str, Callable[[int | None], Strategy]] = {
    "weighted": WeightedRoundRobin,
    "least-busy": LeastBusy,
    "latency": LowestLatency,
    "prefix-affinity": PrefixAffinity,
    "prefix-load": PrefixLoad,
    "cost": Cheapest,
}


def make_strategy(name: str, seed: int | None = None) -> Strategy:
    """A fresh strategy (its own cursor, ring, scores) for one model route."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown routing strategy {name!r}; use one of: {', '.join(STRATEGIES)}"
        ) from None
    return factory(seed)
