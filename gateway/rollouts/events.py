"""Every rollout transition, announced four ways: a log event, a Prometheus counter, an
OpenTelemetry span event, and a webhook (gateway/alerts' `rollout` event, when the policy
subscribes one).

Only the replica whose compare-and-set moved the state announces it, so each transition is
announced once however many replicas run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

log = logging.getLogger("gateway.rollouts")


class RolloutEvents:
    def __init__(self, registry: Any = None, tracing: Any = None,
                 alerts: Callable[[], Any] | None = None) -> None:
        self._tracing = tracing
        # A getter: the app's alerter (deps.alerts) may be replaced after this is built.
        self._alerts = alerts or (lambda: None)
        self.transitions: Counter | None = None
        self.percent: Gauge | None = None
        if registry is not None:
            self.transitions = Counter(
                "gateway_rollout_transitions_total",
                "Rollout transitions (started, step, paused, resumed, promoted, rolled_back)",
                ["model", "rollout", "transition"], registry=registry)
            self.percent = Gauge("gateway_rollout_candidate_percent",
                                 "Share of the model's requests routed to the candidate",
                                 ["model", "rollout"], registry=registry)

    def set_percent(self, model: str, rid: str, percent: float) -> None:
        if self.percent is not None:
            self.percent.labels(model, rid).set(percent)

    def transition(self, model: str, rid: str, kind: str, detail: dict[str, Any]) -> None:
        payload = {"event": "rollout_" + kind, "model": model, "rollout": rid, **detail}
        level = logging.WARNING if kind == "rolled_back" else logging.INFO
        log.log(level, "rollout %s of %s: %s %s", rid, model, kind,
                detail.get("reason", ""), extra={"rollout": payload})
        if self.transitions is not None:
            self.transitions.labels(model, rid, kind).inc()
        span_event = getattr(self._tracing, "rollout_event", None)
        if span_event is not None:
            try:
                span_event(f"rollout.{kind}", {"gateway.rollout.model": model,
                                               "gateway.rollout.id": rid,
                                               "gateway.rollout.reason":
                                                   str(detail.get("reason", ""))})
            except Exception:  # telemetry must never stop a rollback
                log.warning("rollout span event failed", exc_info=True)
        emit = getattr(self._alerts(), "emit", None)
        if emit is not None:
            try:
                emit("rollout", {**payload, "transition": kind, "message":
                                 f"rollout {rid} of {model}: {kind.replace('_', ' ')} "
                                 f"({detail.get('reason', '')})"})
            except Exception:
                log.warning("rollout webhook failed", exc_info=True)
