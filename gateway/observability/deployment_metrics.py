"""Per-deployment series from settled records: attempts by outcome, attempt latency, and the
serving attempt's time to first token — so a dashboard (or a rollout's reader) can put one
backend beside another. Errors by reason are `gateway_upstream_errors_total`, counted where
the attempt fails (metrics.py).

Deployment ids and models come from the policy, so the label sets are bounded; children are
cached per label set, built once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from gateway.accounting.records import RequestRecord
from gateway.observability.children import Children
from gateway.observability.histograms import HistogramFamily

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class DeploymentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "gateway_deployment_requests_total",
            "Upstream attempts by public model, deployment and outcome (ok, error, "
            "failed_midstream, cancelled, drained)", ["model", "deployment", "outcome"],
            registry=registry)
        self.latency = HistogramFamily(
            "gateway_deployment_request_duration_seconds",
            "Upstream attempt duration by deployment, successful attempts only",
            ["model", "deployment"], _LATENCY, registry)
        self.ttft = HistogramFamily(
            "gateway_deployment_time_to_first_token_seconds",
            "Time to first token of the attempt that served a stream, by deployment",
            ["model", "deployment"], _LATENCY, registry)
        self._attempts = Children(self.attempts)

    def observe(self, record: RequestRecord, model: str) -> None:
        """`model` is the record's model, or `_unknown` when the policy has no such model."""
        for a in record.attempts:
            self._attempts.inc(model, a.deployment, a.outcome)
            if a.outcome != "ok":
                continue
            self.latency.labels(model, a.deployment).observe(a.duration_ms / 1000)
            if record.ttft_ms is not None and a is record.attempts[-1]:
                # The record's TTFT is the client's, measured from the request's start; the
                # serving attempt is the one it belongs to.
                self.ttft.labels(model, a.deployment).observe(record.ttft_ms / 1000)
