"""Autoscaling signals: the demand this replica sees, per public model and per self-hosted
pool, as gauges computed when `/metrics` is scraped (nothing on the request path but a token
count added in the settle task).

- per model: attempts in flight to its deployments, tokens per second (input and output,
  over the last minute), and the requests its self-hosted backends hold queued;
- per pool (a self-hosted provider: `kind: vllm` or `local`, i.e. one vLLM Deployment and
  its Service): in flight from this replica, the backends' `num_requests_waiting` and
  `num_requests_running` summed, KV-cache use averaged and maxed, and how many backends gave
  a fresh scrape (so a query can tell "no data" from "idle"), and the backends' queue time
  (mean wait of the requests they scheduled since the previous scrape) where they report it.

In-flight and tokens/s are this replica's share: sum them across replicas (the KEDA and HPA
examples in deploy/ do). Backend gauges are the backends' own, seen alike by every replica:
take `max` across replicas, never `sum`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

SELF_HOSTED = frozenset({"vllm", "local"})


class TokenWindow:
    """Tokens per model over a sliding window, in fixed slots: an add is a dict lookup and two
    integer additions; a slot's dict is replaced once per slot period, not per request."""

    def __init__(self, window_s: float = 60.0, slots: int = 12,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._n = slots
        self._slot_s = window_s / slots
        self._slots: list[dict[str, list[int]]] = [{} for _ in range(slots)]
        self._epochs = [-1] * slots
        self._clock = clock
        self._started = clock()

    def add(self, model: str, n_in: int, n_out: int) -> None:
        epoch = int(self._clock() // self._slot_s)
        i = epoch % self._n
        if self._epochs[i] != epoch:
            self._slots[i] = {}
            self._epochs[i] = epoch
        acc = self._slots[i].get(model)
        if acc is None:
            acc = self._slots[i][model] = [0, 0]
        acc[0] += n_in
        acc[1] += n_out

    def rates(self) -> dict[str, tuple[float, float]]:
        """Model → (input, output) tokens per second over the window (or the uptime, when
        shorter)."""
        now = self._clock()
        epoch = int(now // self._slot_s)
        covered = (self._n - 1) * self._slot_s + (now - epoch * self._slot_s)
        covered = max(min(covered, now - self._started), 1e-9)
        totals: dict[str, list[int]] = {}
        for i in range(self._n):
            if epoch - self._epochs[i] >= self._n:
                continue
            for model, (a, b) in self._slots[i].items():
                t = totals.setdefault(model, [0, 0])
                t[0] += a
                t[1] += b
        return {m: (a / covered, b / covered) for m, (a, b) in totals.items()}


class Demand:
    """A Prometheus collector: reads the policy and the load signals handed in by the
    `/metrics` handler (`update`) and yields the gauges above."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.tokens = TokenWindow()
        self._policy: Any = None
        self._signals: Any = None
        self._queue: Mapping[str, float | None] = {}
        if registry is not None:
            registry.register(self)

    def update(self, policy: Any, signals: Any,
               queue_s: Mapping[str, float | None] | None = None) -> None:
        """`queue_s`: deployment id → mean queue seconds over its last scrape interval
        (`SignalCollector.queue_times.mean_s`), where backends report it."""
        self._policy, self._signals, self._queue = policy, signals, queue_s or {}

    def describe(self) -> list[Metric]:
        return []  # computed at collect time; no duplicate-name check needed at register

    def collect(self) -> Iterator[Metric]:
        policy, signals = self._policy, self._signals
        g = {name: GaugeMetricFamily(name, doc, labels=labels) for name, doc, labels in _GAUGES}
        rates = self.tokens.rates()
        loads = signals.loads if signals is not None else {}
        models = policy.models if policy is not None else {}
        pools: dict[str, list[Any]] = {}
        pool_queue: dict[str, list[float]] = {}
        for model, route in models.items():
            in_flight = 0
            waiting = 0
            for d in route.deployments:
                queued = self._queue.get(d.id)
                if queued is not None:
                    g["gateway_deployment_queue_time_seconds"].add_metric([d.id], queued)
                    pool_queue.setdefault(d.provider, []).append(queued)
                load = loads.get(d.id)
                if load is None:
                    continue
                in_flight += load.in_flight
                prov = policy.providers.get(d.provider)
                if getattr(prov, "kind", None) in SELF_HOSTED:
                    pools.setdefault(d.provider, []).append(load)
                    waiting += load.waiting or 0
            a, b = rates.get(model, (0.0, 0.0))
            g["gateway_model_in_flight"].add_metric([model], in_flight)
            g["gateway_model_requests_waiting"].add_metric([model], waiting)
            g["gateway_model_tokens_per_second"].add_metric([model, "input"], a)
            g["gateway_model_tokens_per_second"].add_metric([model, "output"], b)
        for name, prov in (policy.providers.items() if policy is not None else ()):
            if getattr(prov, "kind", None) in SELF_HOSTED:
                pools.setdefault(name, [])
        for pool, pool_loads in pools.items():
            fresh = [x for x in pool_loads if x.waiting is not None or x.running is not None]
            kv = [x.kv_cache_usage for x in pool_loads if x.kv_cache_usage is not None]
            g["gateway_pool_in_flight"].add_metric([pool], sum(x.in_flight for x in pool_loads))
            g["gateway_pool_requests_waiting"].add_metric(
                [pool], sum(x.waiting or 0 for x in fresh))
            g["gateway_pool_requests_running"].add_metric(
                [pool], sum(x.running or 0 for x in fresh))
            g["gateway_pool_backends_reporting"].add_metric([pool], len(fresh))
            # Absent, not NaN, when no backend reported: an autoscaler reads "no data" as 0,
            # while NaN would fail its query.
            if kv:
                g["gateway_pool_kv_cache_usage_ratio"].add_metric([pool], sum(kv) / len(kv))
                g["gateway_pool_kv_cache_usage_max_ratio"].add_metric([pool], max(kv))
            waits = pool_queue.get(pool)
            if waits:
                g["gateway_pool_queue_time_seconds"].add_metric([pool], max(waits))
        yield from g.values()


_GAUGES = (
    ("gateway_model_in_flight", "Upstream attempts in flight from this replica, by public "
     "model", ["model"]),
    ("gateway_model_requests_waiting", "Requests queued in the model's self-hosted backends "
     "(vLLM num_requests_waiting, summed)", ["model"]),
    ("gateway_model_tokens_per_second", "Tokens per second this replica settled for the "
     "model over the last minute, by type (input, output)", ["model", "type"]),
    ("gateway_pool_in_flight", "Upstream attempts in flight from this replica to the "
     "self-hosted pool", ["pool"]),
    ("gateway_pool_requests_waiting", "Requests waiting in the pool's backends (vLLM "
     "num_requests_waiting, summed over fresh scrapes)", ["pool"]),
    ("gateway_pool_requests_running", "Requests running in the pool's backends (vLLM "
     "num_requests_running, summed over fresh scrapes)", ["pool"]),
    ("gateway_pool_kv_cache_usage_ratio", "Mean KV-cache use (0-1) of the pool's backends "
     "with a fresh scrape", ["pool"]),
    ("gateway_pool_kv_cache_usage_max_ratio", "Highest KV-cache use (0-1) among the pool's "
     "backends with a fresh scrape", ["pool"]),
    ("gateway_pool_backends_reporting", "Backends of the pool whose last /metrics scrape is "
     "fresh", ["pool"]),
    ("gateway_pool_queue_time_seconds", "Longest mean queue time among the pool's backends "
     "over their last scrape interval (vLLM request_queue_time_seconds)", ["pool"]),
    ("gateway_deployment_queue_time_seconds", "Mean queue time the deployment's backend "
     "reported over its last scrape interval (vLLM request_queue_time_seconds)",
     ["deployment"]),
)
