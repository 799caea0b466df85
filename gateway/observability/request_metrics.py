"""What a settled request adds to the metrics beyond tokens and cost: the GenAI
conventions' histograms (genai_metrics.py), the per-deployment series
(deployment_metrics.py) and the tokens/s window of the autoscaling gauges (demand.py) — plus
the tenant label cap and the OTLP export, which follow the policy.

`Settler.finish` calls `observe` in the settle task, after the client has its response.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.accounting.records import RequestRecord
from gateway.observability.demand import Demand
from gateway.observability.deployment_metrics import DeploymentMetrics
from gateway.observability.genai_metrics import GenAIMetrics
from gateway.observability.labels import LabelCap
from gateway.observability.metric_export import OtlpMetricExport

log = logging.getLogger("gateway.metrics")

DEFAULT_TENANT_LIMIT = 100


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry, *, exporters: list[Any] | None = None,
                 env: Any = None) -> None:
        self.genai = GenAIMetrics(registry)
        self.deployments = DeploymentMetrics(registry)
        self.demand = Demand(registry)
        # Per-tenant series (tokens, cost) keep their own label for this many tenants.
        self.tenants = LabelCap(DEFAULT_TENANT_LIMIT)
        # OTLP: started the first time a policy turns it on; `exporters` replaces the ones the
        # environment names (tests pass one that keeps what it is given).
        self._exporters = exporters
        self._env = env
        self.otlp: OtlpMetricExport | None = None
        self._otlp_tried = False
        self._otlp_on = False

    def observe(self, record: RequestRecord, policy: Any) -> None:
        obs = policy.observability
        self.tenants.limit = obs.tenant_label_limit
        if obs.otlp_metrics is not self._otlp_on:
            self._switch_otlp(obs.otlp_metrics)
        model = record.model if record.model in policy.models else "_unknown"
        self.genai.observe(record, policy)
        self.deployments.observe(record, model)
        n_in = n_out = 0
        for a in record.attempts:
            u = a.usage
            if u is not None:
                n_in += u.prompt_tokens
                n_out += u.completion_tokens
        if n_in or n_out:
            self.demand.tokens.add(model, n_in, n_out)

    def _switch_otlp(self, on: bool) -> None:
        self._otlp_on = on
        if not on:
            if self.otlp is not None:
                self.otlp.shutdown()
                self.otlp = None
                self._otlp_tried = False
            return
        if self.otlp is None and not self._otlp_tried:
            self._otlp_tried = True  # one warning when no exporter is configured, not one a request
            families = self.genai.families
            if self._exporters is not None:
                self.otlp = OtlpMetricExport(families, self._exporters)
            else:
                self.otlp = OtlpMetricExport.from_env(families, self._env)
            if self.otlp is not None:
                self.otlp.start()

    def shutdown(self) -> None:
        """The last OTLP export and the exporter thread stopped (app shutdown)."""
        otlp, self.otlp = self.otlp, None
        if otlp is not None:
            try:
                otlp.shutdown()
            except Exception:
                log.warning("OTLP metrics shutdown failed", exc_info=True)
