"""Load signals: per-deployment in-flight counts and smoothed latencies kept on the request
path, plus a background task that scrapes self-hosted backends' Prometheus `/metrics` (vLLM
names) and probes their `/health`.

The request path only touches memory: `begin`/`end` bump counters, `snapshot()` returns a
cached `Signals` rebuilt only when something changed or a scrape went stale. Scrapes run in
their own task and never delay a request. A scrape that failed, or is older than `stale_s`,
drops out of the snapshot (`waiting`/`running`/`kv_cache_usage` None), and strategies fall back
to in-flight counts.

The snapshot also carries the process's prefix index (`prefixes`, which `prefix-load` reads
and records into), and, with `state.redis_url`, other replicas' in-flight counts and prefix
records arrive through `shared_view.SharedView` in its own task, added here in memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.policy.models import LocalProvider, OpenAIProvider, Policy
from gateway.routing.base import EndpointLoad, Signals, new_load, new_signals
from gateway.routing.periodic import cancel, every
from gateway.routing.prefix_index import PrefixIndex
from gateway.routing.prometheus import Sample, parse_prometheus
from gateway.routing.queue_time import NAMES as QUEUE_TIME_NAMES
from gateway.routing.queue_time import QueueTimes, queue_totals
from gateway.routing.window import TrafficWindow
from gateway.upstream import UpstreamClient, UpstreamFailure

if TYPE_CHECKING:
    from gateway.routing.shared_view import SharedView

log = logging.getLogger(__name__)
# Prefix-cache tokens assumed per backend until a scrape reports `vllm:cache_config_info`
# (prefix-load's CACHE_TOKENS; a strategy module is not the collector's to import).
_CACHE_TOKENS = 131_072
# How much of "the other replicas did what this one did" is assumed between two exchanges of
# the shared view (SignalCollector.set_remote). Chosen on the simulator's tuning seed 1, four
# replicas sharing every 0.25 s, `chat-short` TTFT p50/p99: 0 → 42/337 ms, 0.34 → 37/229,
# 0.67 → 39/224, 1 → 42/233 (`rag` 25 ms / 45-63 ms throughout), with prefix-load's queue
# weight fixed at 512; re-checked with it at 128: 0.34 → 25/102, 0.67 → 25/99, 1 → 26/109.
EXTRAPOLATE = 0.67

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
# vLLM renamed the KV-cache gauge around 0.10 (exporting both for a while); older servers
# only have the second name. The first one present wins.
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
# An info gauge whose labels give the KV cache's size: what `prefix-load` assumes the
# backend's prefix cache can hold.
CACHE_CONFIG = "vllm:cache_config_info"
SCRAPED = (RUNNING, WAITING, *KV_USAGE, CACHE_CONFIG, *QUEUE_TIME_NAMES)


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """One scrape of one backend, for the served model."""

    waiting: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None
    cache_tokens: int | None = None
    """KV-cache size in tokens (`num_gpu_blocks` × `block_size` of `vllm:cache_config_info`,
    summed across engines)."""
    queue_time: tuple[float, float] | None = None
    """(seconds, requests) of `vllm:request_queue_time_seconds`, summed across engines."""


def _cache_tokens(samples: Sequence[Sample]) -> int | None:
    total = 0
    for s in samples:
        if s.name == CACHE_CONFIG:
            try:
                total += int(s.labels["num_gpu_blocks"]) * int(s.labels["block_size"])
            except (KeyError, ValueError):
                continue
    return total or None


def engine_metrics(text: str, model: str | None = None) -> EngineMetrics:
    """The scheduler gauges in a vLLM exposition, summed across label sets (data-parallel
    engines export one series each, labelled `engine="0"`, `"1"`…).

    Only series whose `model_name` is `model` count when any does; otherwise all do (a LoRA
    request names the adapter while the series name the base model). KV usage is averaged, not
    summed: it is a fraction of each engine's own cache.
    """
    samples = parse_prometheus(text, SCRAPED)
    if model is not None and any(s.labels.get("model_name") == model for s in samples):
        samples = [s for s in samples if s.labels.get("model_name", model) == model]
    sums: dict[str, float] = {}
    kv: list[float] = []
    kv_name = next((n for n in KV_USAGE if any(s.name == n for s in samples)), None)
    for s in samples:
        if math.isnan(s.value):
            continue
        if s.name == kv_name:
            kv.append(s.value)
        elif s.name in (RUNNING, WAITING):
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    return EngineMetrics(
        waiting=int(sums[WAITING]) if WAITING in sums else None,
        running=int(sums[RUNNING]) if RUNNING in sums else None,
        kv_cache_usage=sum(kv) / len(kv) if kv else None,
        cache_tokens=_cache_tokens(samples),
        queue_time=queue_totals(samples),
    )


@dataclass(frozen=True, slots=True)
class Probe:
    """Where one self-hosted deployment is scraped and health-checked."""

    deployment_id: str
    model: str
    metrics_url: str | None
    health_url: str | None


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def probes_from_policy(policy: Policy, base_urls: Mapping[str, str] | None = None) -> list[Probe]:
    """A probe per self-hosted deployment (`vllm` and `local` providers) and per deployment of
    any provider with an explicit `metrics_url`. `base_urls` overrides provider base URLs known
    only at run time (a `local` backend's port)."""
    out: dict[str, Probe] = {}
    for route in policy.models.values():
        for d in route.deployments:
            prov = policy.providers.get(d.provider)
            if prov is None or d.id in out:
                continue
            base = (base_urls or {}).get(d.provider) or prov.base_url
            explicit = prov.metrics_url if isinstance(prov, OpenAIProvider) else None
            self_hosted = isinstance(prov, LocalProvider) or (
                isinstance(prov, OpenAIProvider) and prov.kind == "vllm")
            if not self_hosted and not explicit:
                continue
            root = _root(base) if base else ""
            metrics = explicit or (f"{root}/metrics" if root else None)
            health = f"{root}/health" if self_hosted and root else None
            if metrics or health:
                out[d.id] = Probe(d.id, d.model, metrics, health)
    return list(out.values())


class _Endpoint:
    __slots__ = ("cache_tokens", "health_failures", "in_flight", "kv", "latency", "latency_at",
                 "running", "scraped_at", "ttft", "waiting")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency: float | None = None
        self.ttft: float | None = None
        self.latency_at = -math.inf
        self.waiting: int | None = None
        self.running: int | None = None
        self.kv: float | None = None
        self.cache_tokens: int | None = None  # kept across failed scrapes: it is static
        self.scraped_at = -math.inf
        self.health_failures = 0


class SignalCollector:
    """In-flight counts, smoothed latencies, scraped queue gauges and active health, per
    deployment id; one per gateway process, built by the app and started in its lifespan."""

    def __init__(
        self,
        probes: Sequence[Probe] = (),
        *,
        client: UpstreamClient | None = None,
        interval_s: float = 5.0,
        stale_s: float = 15.0,
        timeout_s: float = 2.0,
        ewma_alpha: float = 0.1,
        latency_ttl_s: float = 300.0,
        unhealthy_after: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probes = list(probes)
        self._client = client
        self._own_client = client is None
        self._interval = interval_s
        self._stale = stale_s
        self._timeout = min(timeout_s, interval_s)
        # Weight of the newest sample. TTFT varies tenfold with prompt length between
        # requests to one backend; 0.1 averages ~10 of them yet follows a real shift (a
        # degraded provider) within a few dozen. With 0.3 the `latency` strategy chased noise
        # in the simulator: TTFT p50 139 ms and p99 854 ms, against 86 and 453 ms with 0.1.
        self._alpha = ewma_alpha
        # Latency history older than this is forgotten, so the `latency` strategy re-explores
        # a deployment it stopped using after one slow spell.
        self._latency_ttl = latency_ttl_s
        # Consecutive failed /health probes before a deployment is reported unhealthy: one
        # lost probe (a GC pause, a dropped packet) must not pull a backend.
        self._unhealthy_after = unhealthy_after
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._version = 0
        self._cached: Signals | None = None
        self._serial = 0  # of the last snapshot published (Signals.serial)
        self._cached_version = -1
        self._cached_until = -math.inf
        self._task: asyncio.Task[None] | None = None
        # The last 15 minutes per deployment for the console (requests/s, errors, TTFT
        # percentiles); fed from `end`, read only by the admin side.
        self.window = TrafficWindow(clock=clock)
        # Mean queue time per deployment over its last scrape interval (demand gauges).
        self.queue_times = QueueTimes()
        # Where prompts were sent (prefix-load), kept across policy reloads; the shared view
        # publishes its records and adds other replicas'.
        self.prefixes = PrefixIndex(_CACHE_TOKENS)
        # In flight from other replicas, per deployment, at the last exchange; how many other
        # replicas there were, and this one's own counts then (SharedView.set_remote).
        self._remote: Mapping[str, int] = {}
        self._others = 0
        self._own_at: dict[str, int] = {}
        # Deployments changed since the last snapshot: only those are rebuilt.
        self._dirty: set[str] = set()
        self._all_dirty = True
        self.view: SharedView | None = None

    @classmethod
    def from_policy(cls, policy: Policy, *, client: UpstreamClient | None = None,
                    base_urls: Mapping[str, str] | None = None) -> SignalCollector:
        collector = cls(probes_from_policy(policy, base_urls), client=client,
                        interval_s=policy.router.health_check_interval_s,
                        stale_s=policy.router.metrics_stale_s)
        if policy.state.redis_url:
            from gateway.routing.shared_view import SharedView
            collector.view = SharedView.from_policy(policy, collector)
        return collector

    def set_probes(self, probes: Sequence[Probe]) -> None:
        """Swap the probe list (policy reload); counters of known deployments are kept."""
        self._probes = list(probes)
        keep = {p.deployment_id for p in self._probes}
        for did, ep in self._endpoints.items():
            if did not in keep:
                ep.health_failures = 0
                ep.scraped_at = -math.inf
        self._all_dirty = True
        self._version += 1

    def _ep(self, deployment_id: str) -> _Endpoint:
        ep = self._endpoints.get(deployment_id)
        if ep is None:
            ep = self._endpoints[deployment_id] = _Endpoint()
        return ep

    # -- the request path: memory only --------------------------------------------------------

    def begin(self, deployment_id: str) -> None:
        """An attempt was sent to this deployment."""
        self._ep(deployment_id).in_flight += 1
        self._dirty.add(deployment_id)
        self._version += 1

    def end(self, deployment_id: str, ok: bool, latency_s: float | None = None,
            ttft_s: float | None = None) -> None:
        """The attempt ended. Only successes feed the latency averages: a failure is often
        fast (an instant 503) and must not make a broken deployment look quick."""
        ep = self._ep(deployment_id)
        ep.in_flight = max(0, ep.in_flight - 1)
        self.window.record(deployment_id, ok, ttft_s)
        if ok:
            now = self._clock()
            fresh = now - ep.latency_at <= self._latency_ttl
            a = self._alpha
            if latency_s is not None:
                ep.latency = (latency_s if ep.latency is None or not fresh
                              else a * latency_s + (1 - a) * ep.latency)
            if ttft_s is not None:
                ep.ttft = (ttft_s if ep.ttft is None or not fresh
                           else a * ttft_s + (1 - a) * ep.ttft)
            if latency_s is not None or ttft_s is not None:
                ep.latency_at = now
        self._dirty.add(deployment_id)
        self._version += 1

    def snapshot(self) -> Signals:
        """The current signals. Cheap: rebuilt only after a change or when a value goes stale,
        and then only for the deployments that changed (the others keep their `EndpointLoad`
        objects, which lets `prefix-load` skip them)."""
        now = self._clock()
        cached = self._cached
        if cached is not None and now < self._cached_until:
            if self._cached_version == self._version:
                return cached
            if not self._all_dirty:
                loads = dict(cached.loads)
                until = self._cached_until
                for did in self._dirty:
                    ep = self._endpoints.get(did)
                    if ep is not None:
                        loads[did], ep_until = self._load(did, ep, now)
                        if ep_until < until:
                            until = ep_until
                return self._publish(loads, until, cached.serial, frozenset(self._dirty))
        loads = {}
        until = math.inf
        for did, ep in self._endpoints.items():
            loads[did], ep_until = self._load(did, ep, now)
            if ep_until < until:
                until = ep_until
        return self._publish(loads, until, 0, frozenset())

    def _load(self, did: str, ep: _Endpoint, now: float) -> tuple[EndpointLoad, float]:
        """One deployment's load now, and until when it stays true. Rebuilt for every
        `begin` and `end` on the request path: comparisons rather than `min()` calls, and
        `new_load` (one `tuple.__new__`) rather than the named tuple's keyword `__new__`."""
        scrape_ok = now - ep.scraped_at <= self._stale
        lat_ok = now - ep.latency_at <= self._latency_ttl
        until = math.inf
        if scrape_ok:
            until = ep.scraped_at + self._stale
        if lat_ok and ep.latency_at + self._latency_ttl < until:
            until = ep.latency_at + self._latency_ttl
        remote = self._remote_now(did, ep) if self._others else self._remote.get(did, 0)
        if scrape_ok:
            return new_load(ep.in_flight + remote, ep.waiting, ep.running, ep.kv,
                            ep.cache_tokens, ep.latency if lat_ok else None,
                            ep.ttft if lat_ok else None, self.queue_times.mean_s.get(did)), until
        return new_load(ep.in_flight + remote, None, None, None, ep.cache_tokens,
                        ep.latency if lat_ok else None, ep.ttft if lat_ok else None,
                        None), until

    def _remote_now(self, did: str, ep: _Endpoint) -> int:
        """Other replicas' in flight now, extrapolated (`set_remote`); only with others."""
        moved = round(EXTRAPOLATE * self._others * (ep.in_flight - self._own_at.get(did, 0)))
        return max(0, self._remote.get(did, 0) + moved)

    def _publish(self, loads: dict[str, EndpointLoad], until: float, since: int,
                 changed: frozenset[str]) -> Signals:
        self._serial += 1
        self._cached = new_signals(loads, self.prefixes, self._serial, since, changed)
        self._cached_version = self._version
        self._cached_until = until
        self._dirty.clear()
        self._all_dirty = False
        return self._cached

    def local_in_flight(self) -> dict[str, int]:
        """This replica's own in-flight count per deployment (what the shared view publishes)."""
        return {did: ep.in_flight for did, ep in self._endpoints.items() if ep.in_flight}

    def set_remote(self, remote: Mapping[str, int], others: int = 0) -> None:
        """Other replicas' in-flight counts per deployment as of this exchange, and how many
        other replicas there are; ({}, 0): the shared view is down or stale, and routing falls
        back to this replica's own counts.

        Until the next exchange the others' counts are extrapolated from this replica's own:
        EXTRAPOLATE × `others` × (own in flight now − own in flight then) is added. Every replica
        routes on the same stale view, so what this one did since, they probably did too; a
        view held still between exchanges made all of them pile onto whichever deployment
        looked least busy at the last one (in the simulator, four replicas sharing raw counts
        every 0.25 s gave least-busy a TTFT p99 of 2.3 s on `rag` against 1.6 s without
        sharing)."""
        self._remote = dict(remote)
        self._others = others
        self._own_at = {did: ep.in_flight for did, ep in self._endpoints.items()}
        for did in remote:
            self._ep(did)
        self._all_dirty = True
        self._version += 1

    def unhealthy_ids(self) -> frozenset[str]:
        """Deployments whose last `unhealthy_after` health probes all failed."""
        return frozenset(did for did, ep in self._endpoints.items()
                         if ep.health_failures >= self._unhealthy_after)

    # -- the background side ------------------------------------------------------------------

    def observe(self, deployment_id: str, metrics: EngineMetrics | None) -> None:
        """Record one scrape; None (failed) drops the previous one at once rather than when it
        goes stale: a backend that stopped answering should not keep looking idle."""
        ep = self._ep(deployment_id)
        if metrics is None:
            ep.waiting = ep.running = ep.kv = None
            ep.scraped_at = -math.inf
        else:
            ep.waiting, ep.running, ep.kv = metrics.waiting, metrics.running, metrics.kv_cache_usage
            if metrics.cache_tokens:
                ep.cache_tokens = metrics.cache_tokens
            ep.scraped_at = self._clock()
        self.queue_times.update(deployment_id, metrics.queue_time if metrics else None)
        self._dirty.add(deployment_id)
        self._version += 1

    def observe_health(self, deployment_id: str, ok: bool) -> None:
        ep = self._ep(deployment_id)
        ep.health_failures = 0 if ok else ep.health_failures + 1
        self._version += 1

    async def _scrape(self, client: UpstreamClient, probe: Probe) -> None:
        if probe.metrics_url:
            metrics: EngineMetrics | None = None
            try:
                status, body = await client.get(probe.metrics_url, self._timeout)
                if status == 200:
                    metrics = engine_metrics(body.decode("utf-8", "replace"), probe.model)
            except UpstreamFailure as e:
                log.debug("scrape of %s failed: %s", probe.metrics_url, e)
            self.observe(probe.deployment_id, metrics)
        if probe.health_url:
            ok = False
            try:
                status, _ = await client.get(probe.health_url, self._timeout)
                ok = status == 200
            except UpstreamFailure as e:
                log.debug("health probe of %s failed: %s", probe.health_url, e)
            failures = self._ep(probe.deployment_id).health_failures
            if not ok and failures + 1 == self._unhealthy_after:
                log.warning("deployment %s failed %d health probes in a row (%s); skipping it",
                            probe.deployment_id, self._unhealthy_after, probe.health_url)
            self.observe_health(probe.deployment_id, ok)

    async def scrape_once(self) -> None:
        """Scrape and probe every endpoint once, concurrently."""
        if not self._probes:
            return
        if self._client is None:
            self._client = UpstreamClient(max_connections=max(4, len(self._probes) * 2))
        client = self._client
        await asyncio.gather(*(self._scrape(client, p) for p in self._probes))

    async def _run(self) -> None:
        await every(self._interval, self._clock, self.scrape_once, log, "load-signal scrape")

    def start(self) -> None:
        """Start the background scraper and the shared view (call from the app's lifespan,
        inside the loop)."""
        if self._task is None and self._probes:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="load-signals")
        if self.view is not None:
            self.view.start()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self.view is not None:
            await self.view.stop()
        task, self._task = self._task, None
        await cancel(task)
        if self._own_client and self._client is not None:
            await self._client.close()
            self._client = None
