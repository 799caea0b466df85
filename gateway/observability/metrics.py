"""Prometheus metrics. One registry per app (several apps may share a test process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.observability.children import Children
from gateway.observability.labels import reason_code
from gateway.observability.request_metrics import RequestMetrics

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "Requests by public model and status",
                                ["model", "status"], registry=r)
        self.latency = Histogram("gateway_request_duration_seconds",
                                 "End-to-end request latency", ["model"], buckets=_LATENCY,
                                 registry=r)
        self.ttft = Histogram("gateway_time_to_first_token_seconds",
                              "Time to first streamed byte", ["model"], buckets=_LATENCY,
                              registry=r)
        self.upstream_errors = Counter("gateway_upstream_errors_total",
                                       "Failed upstream attempts", ["deployment", "reason"],
                                       registry=r)
        self.tokens = Counter("gateway_tokens_total", "Tokens by tenant, model and bucket",
                              ["tenant", "model", "bucket"], registry=r)
        self.cost = Counter("gateway_cost_usd_total", "Cost by tenant and model",
                            ["tenant", "model"], registry=r)
        self.ledger_pending = Gauge("gateway_ledger_pending_records",
                                    "Records waiting to be written", registry=r)
        self.ledger_spilled = Counter("gateway_ledger_spilled_records_total",
                                      "Records written to the spill file", registry=r)
        self.limit_store_errors = Counter("gateway_limit_store_errors_total",
                                          "Limit store (Redis) failures by policy outcome",
                                          ["outcome"], registry=r)
        self.budget_alerts = Counter("gateway_budget_alerts_total",
                                     "Budget alert thresholds crossed", ["tenant", "threshold"],
                                     registry=r)
        # Alert webhooks (gateway/alerts): outcome is delivered, retried (an attempt failed
        # and will be retried), failed (given up), dropped (queue full), abandoned (shutdown).
        self.alert_deliveries = Counter("gateway_alert_deliveries_total",
                                        "Alert webhook deliveries by event and outcome",
                                        ["event", "outcome"], registry=r)
        self.alert_pending = Gauge("gateway_alert_deliveries_pending",
                                   "Alert deliveries queued, in flight or waiting to retry",
                                   registry=r)
        self.cooldowns = Gauge("gateway_deployment_cooldown_seconds",
                               "Seconds of cooldown left per deployment", ["deployment"],
                               registry=r)
        self.policy_reloads = Counter("gateway_policy_reloads_total", "Policy reloads",
                                      ["result"], registry=r)
        # Token counting (/v1/messages/count_tokens, /v1/responses/input_tokens): no ledger
        # record, so this is where it shows. source: provider (asked upstream) or estimated.
        self.token_counts = Counter("gateway_token_count_requests_total",
                                    "Token counting requests by public model and who counted",
                                    ["model", "source"], registry=r)
        self._req_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        # From settled records: GenAI conventions, per-deployment series, demand signals,
        # the tenant label cap (request_metrics.py).
        self.settled = RequestMetrics(r)
        # Kept by the tenant as given: the cap runs once per child (children.py).
        tenants = self.settled.tenants
        self._tokens = Children(self.tokens, tenants, at=0)
        self._cost = Children(self.cost, tenants, at=0)
        self._token_counts = Children(self.token_counts)
        self._ttft = Children(self.ttft)  # every streamed request's
        # Safety checks (gateway/guards), counted from each settled record's verdicts.
        self.guard_verdicts = Counter("gateway_guard_verdicts_total",
                                      "Guard verdicts by guard, verdict and tenant",
                                      ["guard", "verdict", "tenant"], registry=r)
        self._guard_verdicts = Children(self.guard_verdicts, tenants, at=2)
        # Cost-aware spill decisions (gateway/routing/spill.py), from settled records.
        self.route_spills = Counter("gateway_route_spills_total",
                                    "Requests a model's spill rule sent external (spill) or kept "
                                    "self-hosted over its TTFT threshold (held)",
                                    ["model", "decision"], registry=r)
        self._route_spills = Children(self.route_spills)

    def request_done(self, model: str, status: int, seconds: float, ttft: float | None) -> None:
        key = (model, status)
        children = self._req_children.get(key)
        if children is None:
            if len(self._req_children) > 10_000:  # unbounded model names would leak memory
                model = "other"
            children = (self.requests.labels(model, str(status)), self.latency.labels(model))
            self._req_children[key] = children  # type: ignore[assignment]
        children[0].inc()
        children[1].observe(seconds)
        if ttft is not None:
            self._ttft(model).observe(ttft)

    def add_tokens(self, tenant: str, model: str, bucket: str, n: int) -> None:
        # The tenant is capped (observability/labels.py), so the series stay bounded.
        self._tokens.inc(tenant, model, bucket, amount=n)

    def add_cost(self, tenant: str, model: str, usd: float) -> None:
        self._cost.inc(tenant, model, amount=usd)

    def token_count(self, model: str, source: str) -> None:
        self._token_counts.inc(model, source)

    def guards_settled(self, record: Any) -> None:
        """A settlement listener: one count per guard verdict in the record (docs/guards.md)."""
        if not record.guards:
            return
        tenant = record.tenant
        for v in record.guards:
            self._guard_verdicts.inc(v["name"], v["verdict"], tenant)

    def spills_settled(self, record: Any) -> None:
        """A settlement listener: one count per request a `spill:` rule decided."""
        reason = record.route_reason
        if reason:
            self._route_spills.inc(record.model, reason.split(":", 1)[0])

    def upstream_error(self, deployment: str, reason: str) -> None:
        # A stable code (`http_503`, `timeout`, `connect`), never the message's free text.
        self.upstream_errors.labels(deployment, reason_code(reason)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
