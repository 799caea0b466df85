"""Alert bodies: the JSON envelope and the Slack-compatible message."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from gateway.alerts.events import (
    AlertEvent,
    budget_exhausted_data,
    budget_threshold_data,
    circuit_open_data,
    json_body,
    slack_body,
)
from gateway.limits.budget import BudgetAlert, BudgetStatus

ALERT = BudgetAlert("acme", "month", "2026-12", 0.8, Decimal("40.5"), Decimal("50"))


def test_json_envelope_carries_type_tenant_and_money_as_strings() -> None:
    event = AlertEvent("budget_threshold", budget_threshold_data(ALERT), "acme", "gw-1",
                       id="evt_x", created_at=datetime(2026, 12, 1, 18, 0, tzinfo=UTC))
    body = json.loads(json_body(event))
    assert body == {"id": "evt_x", "type": "budget_threshold",
                    "created_at": "2026-12-01T18:00:00Z", "replica": "gw-1", "tenant": "acme",
                    "data": {"tenant": "acme", "period": "month", "period_id": "2026-12",
                             "threshold": 0.8, "percent": 80.0, "spent_usd": "40.5",
                             "limit_usd": "50"}}


def test_slack_bodies_are_one_text_field() -> None:
    status = BudgetStatus("acme", "day", "2026-12-01", Decimal("10"), Decimal("10.2"),
                          Decimal("0"), datetime(2026, 12, 2, tzinfo=UTC))
    cases = [
        (AlertEvent("budget_threshold", budget_threshold_data(ALERT), "acme"),
         ["acme", "$40.50", "monthly", "$50.00", "80 %"]),
        (AlertEvent("budget_exhausted", budget_exhausted_data("acme", status, "block"), "acme"),
         ["acme", "daily", "$10.00", "402", "2026-12-02T00:00:00Z"]),
        (AlertEvent("circuit_open", circuit_open_data("gpu-a", "vllm", ["chat"], 30.0),
                    replica="gw-2"), ["gpu-a", "vllm", "chat", "30 s", "gw-2"]),
        (AlertEvent("rollout", {"model": "chat", "message": "canary rolled back"}),
         ["canary rolled back"]),
    ]
    for event, words in cases:
        body = json.loads(slack_body(event))
        assert list(body) == ["text"]
        for w in words:
            assert w in body["text"], (event.type, w, body["text"])


def test_exhausted_payload_says_what_was_left() -> None:
    status = BudgetStatus("acme", "month", "2026-12", Decimal("50"), Decimal("49.99"),
                          Decimal("0.005"), datetime(2027, 1, 1, tzinfo=UTC))
    data = budget_exhausted_data("acme", status, "block")
    assert data["remaining_usd"] == "0.005"
    assert data["resets_at"] == "2027-01-01T00:00:00Z"
