"""The one pooled HTTP client for upstream calls (aiohttp), and the edge where its exceptions
become ours.

aiohttp, not httpx, on the hot path: measured here, a bare pass-through over httpx serves ~550-620
req/s on one core at concurrency 64 where the same over aiohttp serves ~6,500 (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp

from gateway.policy.models import Timeouts


class UpstreamFailure(Exception):
    """A transport-level failure: always retryable if nothing has reached the client."""

    reason = "upstream_failure"


class UpstreamConnectError(UpstreamFailure):
    reason = "connect_error"


class UpstreamTimeout(UpstreamFailure):
    reason = "timeout"


class UpstreamDisconnected(UpstreamFailure):
    reason = "disconnected"


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


class UpstreamResponse:
    """An open upstream response. Read it once (``read`` or ``chunks``), then ``close``.

    A stream's reads are bounded by one stall timer of ours rather than aiohttp's `sock_read`,
    which cancels and schedules a timer on every read the socket makes (some 5,000
    instructions a chunk, a tenth of a bare pass-through's whole cost per chunk:
    docs/benchmarks.md). Ours counts only the time spent waiting in `readany` (bytes a slow
    client leaves buffered are no stall), and is lazy: each wait just records its deadline;
    the one timer is armed at the first wait and, should it fire before the deadline now
    recorded, is armed again for it. A stream that flows re-arms it once per `stall_s`, not
    once per chunk. It ends with the stream (EOF, an error, close, release): no handle is
    left on the loop."""

    __slots__ = ("_deadline", "_resp", "_stall", "_stall_s", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, stall_s: float | None = None) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers
        # The stall limit (the provider's first_byte: what sock_read was), None for none.
        self._stall_s = stall_s
        # When the wait in progress becomes a stall (loop time); 0.0 while none is waiting.
        self._deadline = 0.0
        self._stall: asyncio.TimerHandle | None = None

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, ConnectionResetError) as e:
            raise UpstreamDisconnected(str(e) or type(e).__name__) from None
        except TimeoutError:
            raise UpstreamTimeout("reading the upstream response timed out") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        limit = self._stall_s
        conn = self._resp.connection
        if conn is None:  # the whole body is buffered already: nothing can stall
            limit = None
        elif limit is not None and conn.protocol is not None:
            # aiohttp's sock_read off for this response (set again for the connection's next
            # request): from here the stall timer below bounds the reads.
            conn.protocol.read_timeout = None
            conn.protocol.start_timeout()  # with no read timeout: cancels the armed one
        loop = asyncio.get_running_loop()
        time = loop.time
        try:
            while True:
                if limit is not None:
                    self._deadline = time() + limit
                    if self._stall is None:
                        self._stall = loop.call_at(self._deadline, self._on_stall)
                try:
                    data = await content.readany()
                except BaseException:
                    # This generator was the one waiting (the only place it waits), so the
                    # timer is its own to drop. Not at `yield`: a generator closed there late
                    # (an earlier `chunks()` of this response) must leave a later one's alone.
                    self._disarm()
                    raise
                self._deadline = 0.0
                if not data:
                    self._disarm()
                    return
                yield data
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, ConnectionResetError) as e:
            raise UpstreamDisconnected(str(e) or type(e).__name__) from None
        except TimeoutError:
            raise UpstreamTimeout("the upstream stream stalled past its timeout") from None

    def _on_stall(self) -> None:
        self._stall = None
        deadline = self._deadline
        if not deadline:
            return  # nobody is waiting: the next wait arms it again
        loop = asyncio.get_running_loop()
        if deadline - loop.time() > _EARLY:
            # Armed for an earlier wait; the one in progress began later.
            self._stall = loop.call_at(deadline, self._on_stall)
            return
        self._deadline = 0.0
        # What aiohttp's own sock_read timeout does, so callers see the very same error
        # (UpstreamTimeout below) and the connection is not pooled again.
        exc = aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        conn = self._resp.connection
        if conn is not None and conn.protocol is not None:
            conn.protocol.set_exception(exc)
        self._resp.content.set_exception(exc)

    def _disarm(self) -> None:
        self._deadline = 0.0
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def close(self) -> None:
        """Drop the connection (a cancelled stream must not go back to the pool half-read)."""
        self._disarm()
        self._resp.close()

    def release(self) -> None:
        self._disarm()
        self._resp.release()


# How early the stall timer may fire and still count as on time (the loop runs a timer up to
# its clock resolution early); more than that and it is armed again for the deadline.
_EARLY = 0.001

_TIMEOUTS: dict[tuple[float, float, float], aiohttp.ClientTimeout] = {}


def _client_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for `t`, built once per distinct setting (not per request).

    They alone bound the wait for the response headers, with no timer of our own around the
    call (one timer fewer per request): a pooled connection is taken without one; waiting for
    a free slot and connecting get `connect + first_byte` (the bound the wait for headers had),
    the socket connect `connect`, and from the request sent `first_byte` until the first
    byte. Each raises a TimeoutError, which `send` turns into UpstreamTimeout."""
    key = (t.total, t.connect, t.first_byte)
    timeout = _TIMEOUTS.get(key)
    if timeout is None:
        if len(_TIMEOUTS) > 1024:  # policies reloaded many times: stay bounded
            _TIMEOUTS.clear()
        timeout = _TIMEOUTS[key] = aiohttp.ClientTimeout(
            total=t.total, connect=t.connect + t.first_byte, sock_connect=t.connect,
            sock_read=t.first_byte)
    return timeout


class UpstreamClient:
    """A keep-alive pool for one provider. Built once at startup, closed at shutdown."""

    def __init__(self, max_connections: int = 256, timeouts: Timeouts | None = None) -> None:
        self._max = max_connections
        self._timeouts = timeouts or Timeouts()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max, limit_per_host=self._max, ttl_dns_cache=300,
            family=socket.AF_UNSPEC, enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def send(self, req: UpstreamRequest,
                   timeouts: Timeouts | None = None) -> UpstreamResponse:
        """Send and wait for the response headers (bounded by connect + first_byte)."""
        session = self._session or self._open()
        t = timeouts or self._timeouts
        timeout = _client_timeout(t)
        try:
            resp = await session.request(
                req.method, req.url, data=req.body, headers=req.headers, timeout=timeout,
                allow_redirects=False,
            )
        except TimeoutError:
            wait = t.connect + t.first_byte
            raise UpstreamTimeout(f"no response within {wait:g} s") from None
        except aiohttp.ClientConnectorError as e:
            # The OS message names the upstream's address; clients get only the reason.
            reason = os.strerror(e.os_error.errno) if e.os_error.errno else "connection failed"
            raise UpstreamConnectError(f"cannot connect: {reason}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError, ConnectionResetError) as e:
            raise UpstreamDisconnected(str(e) or type(e).__name__) from None
        except aiohttp.ClientError as e:
            raise UpstreamFailure(str(e) or type(e).__name__) from None
        return UpstreamResponse(resp, t.first_byte)

    async def get(self, url: str, timeout: float = 2.0,
                  headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """A small GET off the hot path (health checks, metric scrapes)."""
        session = self._session or self._open()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                                   headers=dict(headers or {})) as r:
                return r.status, await r.read()
        except TimeoutError:
            raise UpstreamTimeout(f"GET {url} timed out") from None
        except aiohttp.ClientConnectorError as e:
            raise UpstreamConnectError(f"cannot connect: {e}") from None
        except aiohttp.ClientError as e:
            raise UpstreamFailure(str(e) or type(e).__name__) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
