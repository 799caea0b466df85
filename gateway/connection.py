"""One client connection: uvicorn's httptools protocol plus the gateway's rules for slow
clients and the per-replica connection cap.

uvicorn bounds idle keep-alive connections but nothing else: a client that sends its headers a
byte a second, or stops halfway through a body, holds its connection (and the request's task)
for as long as it likes. Like nginx's `client_header_timeout` and `client_body_timeout`, a
connection here must finish its headers within `server.header_timeout_s` and may not pause a
body for longer than `server.body_timeout_s`; otherwise it gets a 408 and is closed. The cap
counts open connections (idle keep-alive ones included), as uvicorn's `limit_concurrency` does,
but refuses only the connections that arrive past it, and in the OpenAI error shape.

The gateway always runs uvicorn's httptools parser (a hard dependency); the rules hook its
parser callbacks, so they are not offered for the h11 parser.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import GatewayError, ServiceUnavailable, error_json
from gateway.policy.models import Server
from gateway.responses import error_response

log = logging.getLogger("gateway.connection")


class _Waiting(Enum):
    """What the connection waits for from the client."""

    NOTHING = 0  # between requests (uvicorn's keep-alive timeout applies), or answering
    HEADERS = 1
    BODY = 2


@dataclass(slots=True)
class _CapWarning:
    """Reaching the cap is logged at most every 10 s: past it every request would log."""

    last: float = -1e9


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    warned: _CapWarning = field(default_factory=_CapWarning, compare=False)

    @classmethod
    def from_policy(cls, server: Server) -> ConnectionLimits:
        return cls(server.header_timeout_s, server.body_timeout_s, server.max_connections)


def connection_class(limits: ConnectionLimits) -> type[ClientConnection]:
    """The protocol class to give uvicorn (`Config(http=...)`), bound to these limits."""
    return type("ClientConnection", (ClientConnection,), {"limits": limits})


class ClientConnection(HttpToolsProtocol):
    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = _Waiting.NOTHING
        self._over_cap = False
        self._headers_by = 0.0  # loop time the current request's headers must be complete by
        self._last_read = 0.0  # loop time body bytes last arrived
        # One lazy timer: it is moved earlier when a deadline needs it, never later; when it
        # fires it checks the state and re-arms. A busy kept-alive connection then costs a
        # clock read per request, not a timer scheduled and cancelled per request.
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Decided once, on arrival: a connection admitted while there was room stays served;
        # only the ones past the cap are answered 503 (and closed).
        self._over_cap = len(self.connections) > self.limits.max_connections
        # The header deadline counts from the connection, not from the first byte: a client
        # that connects and says nothing is as slow as one that trickles.
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting is _Waiting.BODY and not self.transport.is_closing():
            # Reached only when a read leaves a body incomplete: a body that came with its
            # headers never touches the clock.
            self._last_read = now = self.loop.time()
            self._check_by(now + self.limits.body_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._waiting is _Waiting.NOTHING:  # the next request on a kept-alive connection
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._waiting = _Waiting.BODY
        if not self._over_cap:
            super().on_headers_complete()
            return
        # uvicorn takes the ASGI app for this request from `self.app` inside the call.
        app = self.app
        self.app = self._over_capacity  # type: ignore[assignment]
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._waiting = _Waiting.NOTHING
        super().on_message_complete()

    def _await_headers(self) -> None:
        self._waiting = _Waiting.HEADERS
        self._headers_by = self.loop.time() + self.limits.header_timeout_s
        self._check_by(self._headers_by)

    def _check_by(self, when: float) -> None:
        timer = self._timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(when, self._check_progress)

    def _check_progress(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._waiting is _Waiting.NOTHING:
            return
        now = self.loop.time()
        body = self._waiting is _Waiting.BODY
        if self.flow.read_paused:
            # uvicorn stopped reading (pipelining, or the app is behind): not the client's fault.
            self._last_read = now
            self._headers_by = max(self._headers_by, now + self.limits.header_timeout_s)
            self._check_by(now + (self.limits.body_timeout_s if body
                                  else self.limits.header_timeout_s))
            return
        due = self._last_read + self.limits.body_timeout_s if body else self._headers_by
        if now < due:
            self._check_by(due)
        elif body:
            self._close_slow("body_timeout", GatewayError(
                f"The request body stalled: no bytes for {self.limits.body_timeout_s:g} s "
                "(server.body_timeout_s). Send the body without pauses; if this repeats, "
                "check the network between the client and the gateway.",
                status=408, type="invalid_request_error", code="request_timeout"))
        else:
            self._close_slow("header_timeout", GatewayError(
                f"The request headers were not complete within "
                f"{self.limits.header_timeout_s:g} s (server.header_timeout_s). Send the "
                "whole request at once; if this repeats, check the network between the client "
                "and the gateway.",
                status=408, type="invalid_request_error", code="request_timeout"))

    def _close_slow(self, reason: str, error: GatewayError) -> None:
        """Answer 408 if nothing else is being answered on this connection, then close it."""
        log.info("closed a slow client connection: %s", reason,
                 extra={"fields": {"client": _addr(self.client), "reason": reason}})
        cycle = self.cycle
        if self._waiting is _Waiting.BODY:
            # The request's task is waiting for the rest of its body; it sees a disconnect.
            answerable = cycle is not None and not cycle.response_started and not self.pipeline
        else:
            answerable = (cycle is None or cycle.response_complete) and not self.pipeline
        if cycle is not None and not cycle.response_complete:
            # Set now, not when the transport reports the close: whatever the task sends
            # meanwhile must not follow the 408 onto the wire.
            cycle.disconnected = True
            cycle.message_event.set()
        if answerable:
            self.transport.write(self._raw_response(error))
        self._waiting = _Waiting.NOTHING
        self.transport.close()

    def _raw_response(self, error: GatewayError) -> bytes:
        body = error_json(error)
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n",
                 b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n\r\n", body]
        return b"".join(head)

    async def _over_capacity(self, scope: Any, receive: Any, send: Any) -> None:
        limits = self.limits
        now = time.monotonic()
        if now - limits.warned.last >= 10:
            limits.warned.last = now
            log.warning("connection cap reached: %d open connections (server.max_connections "
                        "%d); requests on new connections get 503", len(self.connections),
                        limits.max_connections)
        e = ServiceUnavailable(
            f"This gateway replica is at its limit of {limits.max_connections} open "
            "connections (server.max_connections). Retry in a moment; it may reach another "
            "replica.", code="too_many_connections", headers={"retry-after": "1"})
        # `connection: close` frees the slot as soon as the answer is written.
        await error_response(e, {"connection": "close"})(scope, receive, send)


def _addr(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None
