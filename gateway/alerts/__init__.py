"""Alerts that reach people: webhooks for budget thresholds, exhausted budgets, open circuits
and rollout transitions (policy `alerts:`, docs/alerts.md).

Public API, for any module holding `Deps`:

    deps.alerts.emit("rollout", {"model": "chat", "message": "canary promoted to 50 %"})

`emit(event_type, payload, *, tenant=None) -> int` queues one delivery per subscribed webhook
and returns at once; it never waits for a receiver and never raises for a delivery problem
(only for an unknown event type). Event types: `budget_threshold`, `budget_exhausted`,
`circuit_open`, `rollout`. Delivery is at least once (retries with exponential backoff and
jitter), signed with `X-Gateway-Signature` (HMAC-SHA256, `signing.py`), bounded by
`alerts.queue_size` (overflow is dropped, logged and counted). The last `alerts.log_size`
deliveries are served at `GET /admin/alerts/deliveries`.

Modules: `alerter.py` (detectors and `emit`), `delivery.py` (queue, retries, delivery log),
`events.py` (payloads, JSON and Slack bodies), `signing.py` (HMAC, backoff), `once.py`
(fire-once keys in memory or Redis).
"""

from gateway.alerts.alerter import Alerter

__all__ = ["Alerter"]
