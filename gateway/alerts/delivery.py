"""Delivery: at least once, in the background, bounded, with a log of what happened.

`Dispatcher.submit` is synchronous and never waits: it puts one delivery per webhook on a
queue, or drops it (logged and counted) when `alerts.queue_size` deliveries are already
waiting or retrying. A few worker tasks POST them with the one aiohttp session; a failed
attempt (connection error, timeout, 408/425/429/5xx) is scheduled again after a backoff
(`signing.backoff_s`) without holding a worker, until `max_attempts`. Any other status is
the receiver saying no: given up at once. A request never waits for any of it.

The delivery log keeps the newest `log_size` deliveries in memory, updated in place as
attempts happen, for `GET /admin/alerts/deliveries`. Entries name the webhook and the URL's
host, never its path (a Slack webhook's path is its secret) or the signing secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from gateway.alerts.events import AlertEvent, json_body, slack_body
from gateway.alerts.signing import SIGNATURE_HEADER, backoff_s, sign
from gateway.ids import new_id
from gateway.policy.alerts import Alerts as AlertsConfig
from gateway.policy.alerts import Webhook

log = logging.getLogger("gateway.alerts")

Status = Literal["pending", "retrying", "delivered", "failed", "dropped", "abandoned"]
_RETRYABLE = frozenset({408, 425, 429})
_LOG_EVERY_S = 10.0


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Delivery:
    """One event to one webhook; also its delivery-log entry."""

    event: AlertEvent
    webhook: Webhook
    body: bytes
    id: str = field(default_factory=lambda: "dlv_" + new_id())
    status: Status = "pending"
    attempts: int = 0
    response_status: int | None = None
    last_error: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "event_id": self.event.id, "event": self.event.type,
                "tenant": self.event.tenant, "webhook": self.webhook.name,
                "kind": self.webhook.kind, "host": self.webhook.host, "status": self.status,
                "attempts": self.attempts, "response_status": self.response_status,
                "last_error": self.last_error, "created_at": _iso(self.created_at),
                "last_attempt_at": _iso(self.last_attempt_at),
                "next_attempt_at": _iso(self.next_attempt_at),
                "finished_at": _iso(self.finished_at)}


def _error_text(e: BaseException) -> str:
    """What the log says of a failed attempt: the exception class and, for connection errors,
    host and port only (aiohttp's messages for other errors may quote the URL)."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"{type(e).__name__}: cannot connect to {e.host}:{e.port}"
    if isinstance(e, TimeoutError):
        return "timeout"
    return type(e).__name__


class Dispatcher:
    def __init__(self, config: AlertsConfig, metrics: Any = None,
                 rng: Callable[[], float] | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._rng = rng
        self.log: deque[Delivery] = deque(maxlen=config.log_size)
        self.pending = 0
        """Deliveries queued, in flight or waiting to retry."""
        self.dropped = 0
        """Deliveries dropped since start because the queue was full."""
        self._queue: asyncio.Queue[Delivery] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiting: dict[str, Delivery] = {}
        self._last_drop_log = 0.0
        self._drops_unlogged = 0

    def configure(self, config: AlertsConfig) -> None:
        """A reloaded policy: new bounds for new deliveries (queued ones keep their webhook)."""
        self.config = config
        if config.log_size != self.log.maxlen:
            self.log = deque(self.log, maxlen=config.log_size)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        # No proxy from the environment, no cookies: one plain client for every webhook.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._workers = [asyncio.get_running_loop().create_task(self._work())
                         for _ in range(self.config.concurrency)]

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop. Deliveries already due get up to `grace_s` to go out (an alert raised just
        before shutdown); those waiting for a retry, and what is left, are abandoned."""
        if self._queue is not None:
            # join() returns once every due delivery was attempted (task_done per attempt).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace_s)
        for timer in self._timers.values():
            timer.cancel()
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        left = list(self._waiting.values())
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for d in left:
            self._finish(d, "abandoned")
        if left:
            log.warning("%d alert deliveries not completed at shutdown", len(left))
        if self._session is not None:
            await self._session.close()
        self._workers, self._timers, self._waiting = [], {}, {}

    # ---- submitting --------------------------------------------------------------------------

    def submit(self, event: AlertEvent, webhook: Webhook) -> Delivery:
        """Queue `event` for `webhook`, or drop it when full. Never blocks, never raises."""
        body = slack_body(event) if webhook.kind == "slack" else json_body(event)
        d = Delivery(event, webhook, body)
        self.log.append(d)
        if self._queue is None or self.pending >= self.config.queue_size:
            self.dropped += 1
            self._finish(d, "dropped")
            self._log_drop(d)
            return d
        self.pending += 1
        self._queue.put_nowait(d)
        if self.metrics is not None:
            self.metrics.alert_pending.set(self.pending)
        return d

    def _log_drop(self, d: Delivery) -> None:
        now = time.monotonic()
        if now - self._last_drop_log < _LOG_EVERY_S:
            self._drops_unlogged += 1
            return
        reason = "not started" if self._queue is None else \
            f"{self.config.queue_size} deliveries already waiting (alerts.queue_size)"
        log.warning("alert %s for webhook %r dropped: %s (%d more drops not logged)",
                    d.event.type, d.webhook.name, reason, self._drops_unlogged)
        self._last_drop_log, self._drops_unlogged = now, 0

    # ---- delivering --------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            d = await self._queue.get()
            try:
                await self._attempt(d)
            except asyncio.CancelledError:
                self._waiting[d.id] = d  # reported as abandoned by close()
                raise
            except Exception:  # a bug here must not stop the worker
                log.exception("alert delivery %s failed unexpectedly", d.id)
                self._finish(d, "failed")
            finally:
                self._queue.task_done()

    async def _attempt(self, d: Delivery) -> None:
        assert self._session is not None
        hook = d.webhook
        d.attempts += 1
        d.last_attempt_at = datetime.now(UTC)
        d.next_attempt_at = None
        headers = {"Content-Type": "application/json", "User-Agent": "model-gateway-alerts",
                   "X-Gateway-Event": d.event.type, "X-Gateway-Delivery": d.event.id}
        if hook.secret is not None:
            headers[SIGNATURE_HEADER] = sign(hook.secret.get_secret_value().encode(),
                                             int(time.time()), d.body)
        retry_after: float | None = None
        try:
            async with self._session.post(
                    hook.url, data=d.body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout_s)) as r:
                await r.read()
                d.response_status = r.status
                if 200 <= r.status < 300:
                    d.last_error = None
                    self._finish(d, "delivered")
                    return
                d.last_error = f"HTTP {r.status}"
                retryable = r.status in _RETRYABLE or r.status >= 500
                retry_after = _retry_after(r.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            d.response_status = None
            d.last_error = _error_text(e)
            retryable = True
        if not retryable or d.attempts >= self.config.max_attempts:
            self._finish(d, "failed")
            log.warning("alert %s to webhook %r (%s) failed after %d attempt(s): %s",
                        d.event.type, hook.name, hook.host, d.attempts, d.last_error)
            return
        self._retry_later(d, retry_after)

    def _retry_later(self, d: Delivery, retry_after: float | None) -> None:
        cfg = self.config
        kw = {} if self._rng is None else {"rng": self._rng}
        wait = backoff_s(d.attempts, cfg.backoff_initial_s, cfg.backoff_max_s, **kw)
        if retry_after is not None:  # the receiver said when; believed within the cap
            wait = min(max(wait, retry_after), cfg.backoff_max_s)
        d.status = "retrying"
        d.next_attempt_at = datetime.fromtimestamp(time.time() + wait, UTC)
        self._count(d, "retried")
        self._waiting[d.id] = d
        self._timers[d.id] = asyncio.get_running_loop().call_later(wait, self._due, d)

    def _due(self, d: Delivery) -> None:
        self._timers.pop(d.id, None)
        self._waiting.pop(d.id, None)
        if self._queue is not None:
            self._queue.put_nowait(d)

    def _finish(self, d: Delivery, status: Status) -> None:
        if status != "dropped" and d.status not in ("dropped", "delivered", "failed",
                                                    "abandoned"):
            self.pending -= 1
        self._waiting.pop(d.id, None)
        d.status = status
        d.next_attempt_at = None
        d.finished_at = datetime.now(UTC)
        self._count(d, status)

    def _count(self, d: Delivery, outcome: str) -> None:
        m = self.metrics
        if m is not None:
            m.alert_deliveries.labels(event=d.event.type, outcome=outcome).inc()
            m.alert_pending.set(self.pending)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides
