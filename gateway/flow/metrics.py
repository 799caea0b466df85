"""Flow-control series: queue depth and wait by model, priority and tenant; sheds by reason.

Tenant label values go through the app's tenant cap (`observability/labels.py`: the first
`observability.tenant_label_limit` tenants keep their name, later ones read `_other`), and a
priority is one of the few the policy declares, so the series count stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Queue waits run from nothing to the queue timeout (30 s by default, at most an hour).
_WAIT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry,
                 tenant_label: Callable[[str], str] = lambda t: t) -> None:
        self.tenant_label = tenant_label
        self.depth = Gauge("gateway_flow_queue_depth",
                           "Requests waiting in flow-control queues",
                           ["model", "priority", "tenant"], registry=registry)
        self.wait = Histogram("gateway_flow_queue_wait_seconds",
                              "Time requests spent in a flow-control queue before dispatch "
                              "(requests admitted at once are not observed)",
                              ["model", "priority", "tenant"], buckets=_WAIT,
                              registry=registry)
        self.in_flight = Gauge("gateway_flow_in_flight",
                               "Requests holding a flow-control slot", ["model"],
                               registry=registry)
        self.limit = Gauge("gateway_flow_limit",
                           "Slots a flow-controlled pool may use now", ["model"],
                           registry=registry)
        # reason: tenant_queue_full (429), queue_full, evicted, below_min_priority,
        # queue_timeout (503), client_gone (the client left while queued).
        self.sheds = Counter("gateway_flow_shed_total",
                             "Requests flow control did not serve, by reason",
                             ["model", "priority", "tenant", "reason"], registry=registry)

    def queued(self, model: str, priority: int, tenant: str, delta: int) -> None:
        self.depth.labels(model, str(priority), self.tenant_label(tenant)).inc(delta)

    def waited(self, model: str, priority: int, tenant: str, seconds: float) -> None:
        self.wait.labels(model, str(priority), self.tenant_label(tenant)).observe(seconds)

    def shed(self, model: str, priority: int, tenant: str, reason: str) -> None:
        self.sheds.labels(model, str(priority), self.tenant_label(tenant), reason).inc()

    def watch(self, model: str, in_flight: Callable[[], float],
              limit: Callable[[], float]) -> None:
        """Read a pool's slot counts when `/metrics` is scraped: nothing per request."""
        self.in_flight.labels(model).set_function(in_flight)
        self.limit.labels(model).set_function(limit)
