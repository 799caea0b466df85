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

# A frozen dataclass's `__init__` sets each field through `object.__setattr__`, about 2k
# instructions a field under CPython 3.11: 16k for an `EndpointLoad`, and `SignalCollector`
# builds one per `begin` and per `end`, on the request path. Setting the slots through their
# descriptors is half of that; the objects are the same (still frozen, equal, hashable).
_new = object.__new__
_LOAD_SLOTS = tuple(getattr(EndpointLoad, f).__set__ for f in EndpointLoad.__slots__)
_SIGNALS_SLOTS = tuple(getattr(Signals, f).__set__ for f in Signals.__slots__)
assert EndpointLoad.__slots__ == ("in_flight", "waiting", "running", "kv_cache_usage",
                                  "cache_tokens", "latency_ewma_s", "ttft_ewma_s",
                                  "queue_time_s")
assert Signals.__slots__ == ("loads", "prefixes", "serial", "since", "changed")
_set_in_flight, _set_waiting, _set_running, _set_kv, _set_cache, _set_latency, _set_ttft, \
    _set_queue = _LOAD_SLOTS
_set_loads, _set_prefixes, _set_serial, _set_since, _set_changed = _SIGNALS_SLOTS


def new_load(in_flight: int, waiting: int | None, running: int | None,
             kv_cache_usage: float | None, cache_tokens: int | None,
             latency_ewma_s: float | None, ttft_ewma_s: float | None,
             queue_time_s: float | None) -> EndpointLoad:
    """`EndpointLoad(...)` with every field given, at half the cost (see above)."""
    load = _new(EndpointLoad)
    _set_in_flight(load, in_flight)
    _set_waiting(load, waiting)
    _set_running(load, running)
    _set_kv(load, kv_cache_usage)
    _set_cache(load, cache_tokens)
    _set_latency(load, latency_ewma_s)
    _set_ttft(load, ttft_ewma_s)
    _set_queue(load, queue_time_s)
    return load


def new_signals(loads: Mapping[str, EndpointLoad], prefixes: PrefixIndex | None, serial: int,
                since: int, changed: frozenset[str]) -> Signals:
    """`Signals(...)` with every field given, at half the cost (see above)."""
    signals = _new(Signals)
    _set_loads(signals, loads)
    _set_prefixes(signals, prefixes)
    _set_serial(signals, serial)
    _set_since(signals, since)
    _set_changed(signals, changed)
    return signals


class Strategy(Protocol):
    """Orders the healthy candidates of one model, best first.

    ``candidates`` never contains a deployment in cooldown or with weight 0. The returned list
    is a permutation of (or a subset of) ``candidates``; the proxy tries them in that order.
    A strategy may keep state between calls (a round-robin cursor, a hash ring), but only its
    own, built from the policy when the router is built.
    """

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]: ...
