"""Prometheus series of the response cache (docs/stages.md, "Metrics").

- `gateway_cache_lookups_total{model,tenant,result,reason}` — every request the cache applies
  to: `hit`; `miss` (`absent`, `unreadable`); `bypass` (`no_cache` — the client's
  `Cache-Control: no-cache`, asked afresh and stored; `no_store`; `nondeterministic`; `n`).
- `gateway_cache_stores_total{model,tenant,result}` — replies that reached the store:
  `stored`, or why not: `not_complete` (cut, failed, refused…), `tool_calls`, `too_large`,
  `store_false` (a Responses request asked that nothing be retained).
- `gateway_cache_evictions_total{reason}` — `lru` (the size bound) or `expired` (TTL); the
  memory backend only (Redis evicts by itself: its own `evicted_keys`/`expired_keys`).
- `gateway_cache_entries`, `gateway_cache_bytes` — what the memory backend holds now.
- `gateway_cache_saved_usd_total{model,tenant}` — what hits saved, counted when their record
  settles (priced as the ledger prices it).

Tenants go through the settled metrics' label cap (observability/labels.py), so the series
stay bounded however many tenants there are; `model` is a policy model name.
One instance per app (built in `build_app`, handed to each `Runtime`); the stage of each policy
reload reports into it, and takes the store the previous one used from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.observability.children import Children


class CacheMetrics:
    # The store the last policy's stage used, and where it is: this is the cache's one
    # app-lifetime object, so the next policy's stage finds it here and keeps it when the
    # place is the same (`cache._store_for`).
    kept_store: tuple[tuple[Any, ...], Any] | None = None

    def __init__(self, registry: CollectorRegistry, tenants: Callable[[str], str]) -> None:
        self.lookups = Counter("gateway_cache_lookups_total",
                               "Response cache lookups by model, tenant, result and reason",
                               ["model", "tenant", "result", "reason"], registry=registry)
        self.stores = Counter("gateway_cache_stores_total",
                              "Replies offered to the response cache, by result",
                              ["model", "tenant", "result"], registry=registry)
        self.evictions = Counter("gateway_cache_evictions_total",
                                 "Response cache entries evicted (memory backend)", ["reason"],
                                 registry=registry)
        self.entries = Gauge("gateway_cache_entries", "Entries in the memory response cache",
                             registry=registry)
        self.bytes = Gauge("gateway_cache_bytes", "Bytes held by the memory response cache",
                           registry=registry)
        self.saved = Counter("gateway_cache_saved_usd_total",
                             "What response cache hits saved, in USD", ["model", "tenant"],
                             registry=registry)
        # Kept by the tenant as given: the cap runs once per child (children.py).
        self._lookups = Children(self.lookups, tenants, at=1)
        self._stores = Children(self.stores, tenants, at=1)
        self._evictions, self._saved = Children(self.evictions), Children(self.saved, tenants, 1)
        self._size: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.entries.set_function(lambda: self._size()[0])
        self.bytes.set_function(lambda: self._size()[1])

    def watch_store(self, size: Callable[[], tuple[int, int]]) -> None:
        """The store the gauges read (the newest policy's: a reload builds a new stage)."""
        self._size = size

    def lookup(self, model: str, tenant: str, result: str, reason: str) -> None:
        self._lookups.inc(model, tenant, result, reason)

    def store(self, model: str, tenant: str, result: str) -> None:
        self._stores.inc(model, tenant, result)

    def evicted(self, reason: str) -> None:
        self._evictions.inc(reason)

    def settled(self, record: Any) -> None:
        """A settlement listener: a hit's saving, as its record was priced."""
        saved = record.saved_usd
        if saved:
            self._saved.inc(record.model, record.tenant, amount=float(saved))


class NullCacheMetrics(CacheMetrics):
    """For a stage built without an app's metrics (benchmarks, unit tests)."""

    def __init__(self) -> None:  # registers nothing
        pass

    def watch_store(self, size: Callable[[], tuple[int, int]]) -> None:
        pass

    def lookup(self, model: str, tenant: str, result: str, reason: str) -> None:
        pass

    def store(self, model: str, tenant: str, result: str) -> None:
        pass

    def evicted(self, reason: str) -> None:
        pass

    def settled(self, record: Any) -> None:
        pass
