"""`GET /admin/alerts/deliveries`: the alert delivery log (admin key only; docs/alerts.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import get_args

from starlette.requests import Request
from starlette.routing import Route

from gateway.alerts import Alerter
from gateway.alerts.delivery import Status
from gateway.auth import api_key_from_headers, check_admin_key
from gateway.errors import GatewayError, InvalidRequest
from gateway.policy.alerts import EVENT_TYPES
from gateway.responses import RawResponse, error_response

STATUSES: tuple[str, ...] = get_args(Status)


def routes(alerts: Alerter, admin_key: Callable[[], str | None]) -> list[Route]:
    async def deliveries(request: Request) -> RawResponse:
        try:
            check_admin_key(api_key_from_headers(request.headers), admin_key())
            q = request.query_params
            event, status = q.get("event"), q.get("status")
            if event is not None and event not in EVENT_TYPES:
                raise InvalidRequest(f"event must be one of {', '.join(EVENT_TYPES)} "
                                     f"(got {event!r}).", param="event")
            if status is not None and status not in STATUSES:
                raise InvalidRequest(f"status must be one of {', '.join(STATUSES)} "
                                     f"(got {status!r}).", param="status")
            limit = _limit(q.get("limit"))
            rows = [d for d in alerts.deliveries()
                    if (event is None or d["event"] == event)
                    and (status is None or d["status"] == status)][:limit]
            out = {"object": "list", "data": rows, "pending": alerts.dispatcher.pending,
                   "dropped": alerts.dispatcher.dropped}
            return RawResponse(200, json.dumps(out).encode())
        except GatewayError as e:
            return error_response(e)

    return [Route("/admin/alerts/deliveries", deliveries, methods=["GET"])]


def _limit(text: str | None) -> int:
    if text is None:
        return 100
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise InvalidRequest(f"limit must be an integer from 1 to 100000 (got {text!r}).",
                             param="limit")
    return int(text)
