"""What a routing strategy sees, and the one calling convention every strategy shares.

A strategy is a plain synchronous function of data handed in: no I/O, no globals. Signals are
collected elsewhere (`health.py`, `signals.py`) and passed in as a snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.call import Call
from gateway.providers.base import Target

if TYPE_CHECKING:
    from gateway.routing.prefix_index import PrefixIndex


@dataclass(frozen=True, slots=True)
class EndpointLoad:
    """What is known about one deployment's load right now."""

    in_flight: int = 0
    """Requests this gateway replica has in flight to it."""
    waiting: int | None = None
    """`vllm:num_requests_waiting` from the last fresh scrape; None when unknown or stale."""
    running: int | None = None
    """`vllm:num_requests_running` from the last fresh scrape."""
    kv_cache_usage: float | None = None
    """`vllm:kv_cache_usage_perc` (or the older `vllm:gpu_cache_usage_perc`), 0..1."""
    cache_tokens: int | None = None
    """KV-cache size in tokens from `vllm:cache_config_info`; None until a scrape reports it."""
    latency_ewma_s: float | None = None
    """Smoothed total latency of recent successful requests."""
    ttft_ewma_s: float | None = None
    """Smoothed time to first byte of recent requests."""
    queue_time_s: float | None = None
    """Mean `vllm:request_queue_time_seconds` of the requests the backend scheduled over its
    last scrape interval (`queue_time.QueueTimes`); None when unknown or stale."""


@dataclass(frozen=True, slots=True)
class Signals:
    loads: Mapping[str, EndpointLoad]
    """By deployment id. A missing id means nothing is known (treat as idle)."""
    prefixes: PrefixIndex | None = None
    """The process's prefix index (`SignalCollector.prefixes`, fed by every replica through
    `shared_view`); None: a strategy that needs one keeps its own."""

    def load(self, deployment_id: str) -> EndpointLoad:
        return self.loads.get(deployment_id, _IDLE)


_IDLE = EndpointLoad()
NO_SIGNALS = Signals(loads={})


class Strategy(Protocol):
    """Orders the healthy candidates of one model, best first.

    ``candidates`` never contains a deployment in cooldown or with weight 0. The returned list
    is a permutation of (or a subset of) ``candidates``; the proxy tries them in that order.
    A strategy may keep state between calls (a round-robin cursor, a hash ring), but only its
    own, built from the policy when the router is built.
    """

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]: ...
