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

With an `Outbox` (the gateway always gives one: `outbox.py`), every delivery and each of its
attempts is also written, off the loop, to the ledger's database: a restarted replica loads
its log from there and resumes, as does any replica, the deliveries a dead one left unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from gateway.alerts.events import AlertEvent, json_body, slack_body
from gateway.alerts.outbox import KEEP_S, PROGRESS, Outbox
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


def _ts(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(float(ts), UTC)


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

    def progress(self, lease_until: float) -> tuple[Any, ...]:
        """The outbox row's `PROGRESS` columns."""
        return (self.status, self.attempts, self.response_status, self.last_error,
                _ts(self.last_attempt_at), _ts(self.next_attempt_at), _ts(self.finished_at),
                lease_until)

    def row(self, owner: str, lease_until: float) -> tuple[Any, ...]:
        """The whole outbox row (`outbox.COLUMNS`)."""
        e, w = self.event, self.webhook
        return (self.id, e.id, e.type, e.tenant, w.name, w.kind, w.host,
                self.body.decode(), self.status, self.attempts, self.response_status,
                self.last_error, _ts(self.created_at), _ts(self.last_attempt_at),
                _ts(self.next_attempt_at), _ts(self.finished_at), owner, lease_until)

    @classmethod
    def from_row(cls, r: dict[str, Any], webhook: Webhook) -> Delivery:
        """An unfinished outbox row, to deliver again (the body is as first rendered)."""
        event = AlertEvent(r["event"], {}, r["tenant"], id=r["event_id"],
                           created_at=_dt(r["created_at"]) or datetime.now(UTC))
        return cls(event, webhook, r["body"].encode(), id=r["id"], status=r["status"],
                   attempts=int(r["attempts"]), response_status=r["response_status"],
                   last_error=r["last_error"], created_at=event.created_at,
                   last_attempt_at=_dt(r["last_attempt_at"]),
                   next_attempt_at=_dt(r["next_attempt_at"]))


@dataclass(slots=True)
class PastDelivery:
    """A delivery-log entry read back from the outbox at start (an earlier run's)."""

    row: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    def public(self) -> dict[str, Any]:
        r = self.row
        return {"id": r["id"], "event_id": r["event_id"], "event": r["event"],
                "tenant": r["tenant"], "webhook": r["webhook"], "kind": r["kind"],
                "host": r["host"], "status": r["status"], "attempts": r["attempts"],
                "response_status": r["response_status"], "last_error": r["last_error"],
                **{k: _iso(_dt(r[k])) for k in ("created_at", "last_attempt_at",
                                                 "next_attempt_at", "finished_at")}}


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
                 rng: Callable[[], float] | None = None, outbox: Outbox | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._rng = rng
        self.outbox = outbox
        # This dispatcher's name on the outbox rows it delivers: random per instance (a
        # restart, or a second app in one process, is a new owner that renews none of these).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._leases: asyncio.Task[None] | None = None
        self.log: deque[Delivery | PastDelivery] = deque(maxlen=config.log_size)
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
        if self.outbox is not None:
            self.outbox.start()
            self._leases = asyncio.get_running_loop().create_task(self._keep_leases())

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop. Deliveries already due get up to `grace_s` to go out (an alert raised just
        before shutdown); those waiting for a retry, and what is left, are abandoned."""
        if self._queue is not None:
            # join() returns once every due delivery was attempted (task_done per attempt).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace_s)
        for timer in self._timers.values():
            timer.cancel()
        tasks = [*self._workers, *([self._leases] if self._leases is not None else [])]
        for w in tasks:
            w.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = list(self._waiting.values())
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        if self.outbox is not None:
            # Not abandoned: handed back (lease 0) for the next start or another replica.
            for d in left:
                self.outbox.post(self.outbox.progress, d.id, self.owner, d.progress(0.0))
            if left:
                log.info("%d alert deliveries left in the outbox for the next start",
                         len(left))
            await asyncio.to_thread(self.outbox.stop)
            self.pending -= len(left)
        else:
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
        if self.outbox is not None:  # queued for the outbox's thread: no wait here
            self.outbox.post(self.outbox.insert, d.row(self.owner, self._lease_end()))
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
        self._save(d)
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
        self._save(d)

    def _save(self, d: Delivery) -> None:
        if self.outbox is not None:
            self.outbox.post(self.outbox.progress, d.id, self.owner,
                             d.progress(self._lease_end()))

    def _lease_end(self) -> float:
        return time.time() + self.config.outbox_lease_s

    # ---- the outbox: the log of earlier runs, leases, deliveries left by others ----------------

    async def _keep_leases(self) -> None:
        ob = self.outbox
        assert ob is not None
        read_back = False
        while True:
            # A gateway without webhooks never touches the table (nothing to send or show).
            if not self.config.webhooks:
                await asyncio.sleep(self.config.outbox_lease_s / 3)
                continue
            if not read_back:
                read_back = True
                try:
                    await asyncio.wrap_future(ob.call(ob.prune, time.time() - KEEP_S))
                    self._load_log(await asyncio.wrap_future(ob.call(ob.recent,
                                                                     self.config.log_size)))
                except Exception:  # logged by the outbox; delivery goes on without it
                    pass
            now = time.time()
            ob.post(ob.renew, self.owner, self._lease_end())
            room = self.config.queue_size - self.pending
            if room > 0:
                try:
                    rows = await asyncio.wrap_future(ob.call(
                        ob.adopt, self.owner, now, self._lease_end(), room))
                except Exception:  # the database is away; the next round tries again
                    rows = []
                for r in rows:
                    try:
                        self._resume(r)
                    except Exception:  # one odd row must not stop the leases
                        log.exception("alert delivery %s could not be resumed", r.get("id"))
            await asyncio.sleep(self.config.outbox_lease_s / 3)

    def _load_log(self, rows: list[dict[str, Any]]) -> None:
        here = {d.id for d in self.log}
        past = [PastDelivery(r) for r in reversed(rows) if r["id"] not in here]
        self.log = deque([*past, *self.log], maxlen=self.config.log_size)

    def _resume(self, r: dict[str, Any]) -> None:
        """Deliver an adopted row: now, or when its retry is due."""
        hook = next((w for w in self.config.webhooks if w.name == r["webhook"]), None)
        if hook is None:  # the webhook left the policy: nobody to deliver it to
            assert self.outbox is not None
            r = {**r, "status": "abandoned", "finished_at": time.time()}
            self.outbox.post(self.outbox.progress, r["id"], self.owner,
                             tuple(r[c] for c in PROGRESS))
            self._log_entry(PastDelivery(r))
            return
        d = Delivery.from_row(r, hook)
        self._log_entry(d)
        self.pending += 1
        if self.metrics is not None:
            self.metrics.alert_pending.set(self.pending)
        wait = 0.0 if d.next_attempt_at is None else d.next_attempt_at.timestamp() - time.time()
        if wait > 0:
            d.status = "retrying"
            self._waiting[d.id] = d
            self._timers[d.id] = asyncio.get_running_loop().call_later(wait, self._due, d)
        elif self._queue is not None:
            self._queue.put_nowait(d)
        log.info("alert delivery %s (%s to webhook %r) resumed from the outbox", d.id,
                 d.event.type, hook.name)

    def _log_entry(self, entry: Delivery | PastDelivery) -> None:
        for i, old in enumerate(self.log):
            if old.id == entry.id:
                self.log[i] = entry
                return
        self.log.append(entry)

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
