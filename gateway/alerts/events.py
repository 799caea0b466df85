"""What an alert says: one `AlertEvent`, rendered as the gateway's JSON envelope or as a
Slack-compatible message. Pure functions; no I/O.

The JSON envelope (docs/alerts.md, "Payloads"):

    {"id": "evt_…", "type": "budget_threshold", "created_at": "2026-12-01T18:00:00Z",
     "replica": "gw-7f9c", "tenant": "acme", "data": {…}}

Money is a decimal string, as everywhere the gateway reports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.ids import new_id
from gateway.limits.budget import BudgetAlert, BudgetStatus, fmt_usd, period_label
from gateway.policy.alerts import EventType


@dataclass(frozen=True, slots=True)
class AlertEvent:
    type: EventType
    data: Mapping[str, Any]
    tenant: str | None = None
    replica: str = ""
    id: str = field(default_factory=lambda: "evt_" + new_id())
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f") if d else "0"


def json_body(event: AlertEvent) -> bytes:
    return json.dumps({"id": event.id, "type": event.type, "created_at": _iso(event.created_at),
                       "replica": event.replica, "tenant": event.tenant,
                       "data": dict(event.data)}, separators=(",", ":"), default=str).encode()


def slack_body(event: AlertEvent) -> bytes:
    return json.dumps({"text": slack_text(event)}).encode()


def budget_threshold_data(a: BudgetAlert) -> dict[str, Any]:
    return {"tenant": a.tenant, "period": a.period, "period_id": a.period_id,
            "threshold": a.threshold, "percent": round(a.threshold * 100, 2),
            "spent_usd": _plain(a.spent_usd), "limit_usd": _plain(a.limit_usd)}


def budget_exhausted_data(tenant: str, s: BudgetStatus, on_exceed: str) -> dict[str, Any]:
    left = max(s.limit_usd - s.spent_usd - s.reserved_usd, Decimal(0))
    return {"tenant": tenant, "period": s.period, "period_id": s.period_id,
            "limit_usd": _plain(s.limit_usd), "spent_usd": _plain(s.spent_usd),
            "reserved_usd": _plain(s.reserved_usd), "remaining_usd": _plain(left),
            "resets_at": _iso(s.resets_at), "on_exceed": on_exceed}


def circuit_open_data(deployment: str, provider: str | None, models: list[str],
                      cooldown_s: float) -> dict[str, Any]:
    return {"deployment": deployment, "provider": provider, "models": models,
            "cooldown_s": round(cooldown_s, 3)}


def slack_text(event: AlertEvent) -> str:
    d = event.data
    if event.type == "budget_threshold":
        return (f":warning: Budget alert: tenant *{d['tenant']}* has spent "
                f"{fmt_usd(Decimal(d['spent_usd']))} of its {period_label(d['period'])} budget "
                f"of {fmt_usd(Decimal(d['limit_usd']))} ({d['percent']:g} %) "
                f"for {d['period_id']}.")
    if event.type == "budget_exhausted":
        return (f":no_entry: Budget exhausted: tenant *{d['tenant']}*'s "
                f"{period_label(d['period'])} budget of {fmt_usd(Decimal(d['limit_usd']))} has "
                f"no room left ({fmt_usd(Decimal(d['spent_usd']))} spent); requests are refused "
                f"with 402 until {d['resets_at']}.")
    if event.type == "circuit_open":
        models = ", ".join(d.get("models") or ()) or "none"
        return (f":rotating_light: Circuit open: deployment *{d['deployment']}* (provider "
                f"{d.get('provider') or '?'}, models {models}) is failing and out of rotation "
                f"for {d['cooldown_s']:g} s on replica {event.replica or '?'}.")
    message = d.get("message")
    if isinstance(message, str) and message:
        return f":arrows_counterclockwise: Rollout: {message}"
    return f":arrows_counterclockwise: Rollout event: {json.dumps(dict(d), default=str)}"
