"""A webhook receiver on loopback, as a team's alert endpoint would be: it verifies each
delivery's `X-Gateway-Signature` with the shared secret (docs/alerts.md) and records it.

Faults come from `FakeServer`: `fail_next(n, status=503)` answers the next n deliveries with
that status, `delay_next(n, seconds)` answers them late, `hang_next(n)` never answers them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.alerts.signing import verify
from tests.fakes.base import FakeServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    signed: bool  # the signature header verified with the receiver's secret
    answered: int  # the status it answered; 0 when it hung


class WebhookReceiver(FakeServer):
    def __init__(self, secret: str | None = None, name: str = "webhook") -> None:
        super().__init__(name)
        self.secret = secret
        self.received: list[Received] = []  # every delivery attempt, failed ones included
        self.hanging = 0  # attempts held open right now (hang_next)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self.hook)

    async def hook(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        header = request.headers.get("X-Gateway-Signature", "")
        signed = self.secret is not None and verify(self.secret.encode(), header, raw,
                                                    int(time.time()))
        fault = self.take_fault()
        status = 200
        if fault is not None and fault.kind == "fail":
            status = fault.status
        elif fault is not None and fault.kind == "hang":
            status = 0  # never answered
        self.received.append(Received(request.path, dict(request.headers), json.loads(raw),
                                      raw, signed, status))
        if fault is not None and fault.kind in ("hang", "delay"):
            self.hanging += fault.kind == "hang"
            try:
                await self.apply_pre_fault(fault)
            finally:
                self.hanging -= fault.kind == "hang"
        if status != 200:
            return web.json_response({"error": "injected"}, status=status)
        return web.json_response({"ok": True})

    def delivered(self, event: str | None = None) -> list[Received]:
        """Deliveries answered 200 (of `event` type), in arrival order."""
        return [r for r in self.received if r.answered == 200
                and (event is None or r.headers.get("X-Gateway-Event") == event)]
