"""What a routing strategy sees, and the one calling convention every strategy shares.

A strategy is a plain synchronous function of data handed in: no I/O, no globals. Signals are
collected elsewhere (`health.py`, `signals.py`) and passed in as a snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gateway.call import Call
from gateway.providers.base import Target

if TYPE_CHECKING:
    from gateway.routing.prefix_index import PrefixIndex


class EndpointLoad(NamedTuple):
    """What is known about one deployment's load right now.

    A named tuple, not a frozen dataclass: `SignalCollector` builds one per `begin` and per
    `end` of an attempt, on the request path, and a tuple is made in one C call
    (`tuple.__new__`, ~120 ns) where a frozen dataclass sets each field through
    `object.__setattr__` (~590 ns through its slot descriptors, twice that through its
    `__init__`). Frozen, equal and hashable all the same."""

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


class Signals(NamedTuple):
    """One snapshot of the signals: a named tuple for the reason `EndpointLoad` is one (a
    busy gateway makes one per attempt's begin and end). Tried as a slotted dataclass, whose
    reads CPython 3.11 specialises: `least-busy` was no faster with live signals, and the
    compiled `prefix-load` 3.4 % slower (docs/routing.md, "Decision time")."""

    loads: Mapping[str, EndpointLoad]
    """By deployment id. A missing id means nothing is known (treat as idle)."""
    prefixes: PrefixIndex | None = None
    """The process's prefix index (`SignalCollector.prefixes`, fed by every replica through
    `shared_view`); None: a strategy that needs one keeps its own."""
    serial: int = 0
    """`SignalCollector`'s number for this snapshot (0: not one of its snapshots)."""
    since: int = 0
    """The serial of the snapshot this one was built from, when only the loads of `changed`
    are new objects (0: all of them may be)."""
    changed: frozenset[str] = frozenset()
    """With `since`: the deployments whose `EndpointLoad` differs from that snapshot's, so
    a strategy caching per load object re-reads those alone."""

    def load(self, deployment_id: str) -> EndpointLoad:
        return self.loads.get(deployment_id, _IDLE)


_IDLE = EndpointLoad()
NO_SIGNALS = Signals(loads={})

# A named tuple's own `__new__` is Python (keywords, defaults): ~440 ns for an `EndpointLoad`.
# With every field given, `tuple.__new__` makes the same object in C.
_make = tuple.__new__


def new_load(in_flight: int, waiting: int | None, running: int | None,
             kv_cache_usage: float | None, cache_tokens: int | None,
             latency_ewma_s: float | None, ttft_ewma_s: float | None,
             queue_time_s: float | None) -> EndpointLoad:
    """`EndpointLoad(...)` with every field given, at a quarter of the cost (see above)."""
    return _make(EndpointLoad, (in_flight, waiting, running, kv_cache_usage, cache_tokens,
                                latency_ewma_s, ttft_ewma_s, queue_time_s))


def new_signals(loads: Mapping[str, EndpointLoad], prefixes: PrefixIndex | None, serial: int,
                since: int, changed: frozenset[str]) -> Signals:
    """`Signals(...)` with every field given, in one C call (see above)."""
    return _make(Signals, (loads, prefixes, serial, since, changed))


class Strategy(Protocol):
    """Orders the healthy candidates of one model, best first.

    ``candidates`` never contains a deployment in cooldown or with weight 0. The returned list
    is a permutation of (or a subset of) ``candidates``; the proxy tries them in that order.
    A strategy may keep state between calls (a round-robin cursor, a hash ring), but only its
    own, built from the policy when the router is built.
    """

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]: ...
