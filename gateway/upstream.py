"""The one pooled HTTP client for upstream calls (aiohttp), and the edge where its exceptions
become ours.

aiohttp, not httpx, on the hot path: measured here, a bare pass-through over httpx serves ~550-620
req/s on one core at concurrency 64 where the same over aiohttp serves ~6,500 (docs/benchmarks.md).
"""

from __future__ import annotations

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
    """An open upstream response. Read it once (``read`` or ``chunks``), then ``close``."""

    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

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
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, ConnectionResetError) as e:
            raise UpstreamDisconnected(str(e) or type(e).__name__) from None
        except TimeoutError:
            raise UpstreamTimeout("the upstream stream stalled past its timeout") from None

    def close(self) -> None:
        """Drop the connection (a cancelled stream must not go back to the pool half-read)."""
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


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
        return UpstreamResponse(resp)

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
