"""The alert outbox: every delivery is a row of `alert_deliveries` in the ledger's database
(SQLite by default, PostgreSQL when the ledger is there), so a replica killed outright loses
none it had accepted, and the delivery log outlives restarts.

Why the ledger's database and not Redis: it is the store every gateway has (Redis is
optional) and the one already trusted to keep what must not be lost; Redis is often run
without persistence. Alerts are rare, so a few rows per event cost nothing.

Ownership. A row names the replica delivering it (`owner`) and how long that claim holds
(`lease_until`, epoch seconds). The owner renews its claims every `outbox_lease_s / 3`; a
replica that dies stops renewing, and after `outbox_lease_s` any replica (or the same one,
restarted) adopts the row with one conditional UPDATE — only one adopter's WHERE still
matches, so each delivery has one sender at a time across replicas. A shutdown hands its
unfinished rows back at once (lease 0).

Never on a request's path: `Outbox.post` hands a statement to this module's own thread and
returns; the thread runs them in order on its own connection. Between `submit` and the insert
landing (milliseconds) a delivery lives only in memory — the one window a kill can hit.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.accounting.ledger_sqlite import path_of

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("gateway.alerts")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id {text} PRIMARY KEY, event_id {text} NOT NULL, event {text} NOT NULL, tenant {text},
    webhook {text} NOT NULL, kind {text} NOT NULL, host {text} NOT NULL, body {text} NOT NULL,
    status {text} NOT NULL, attempts {int} NOT NULL, response_status {int}, last_error {text},
    created_at {real} NOT NULL, last_attempt_at {real}, next_attempt_at {real},
    finished_at {real}, owner {text} NOT NULL, lease_until {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_deliveries_open ON alert_deliveries (lease_until)
    WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS alert_deliveries_created ON alert_deliveries (created_at)
"""
COLUMNS = ("id", "event_id", "event", "tenant", "webhook", "kind", "host", "body", "status",
           "attempts", "response_status", "last_error", "created_at", "last_attempt_at",
           "next_attempt_at", "finished_at", "owner", "lease_until")
# What an attempt changes (the update's SET list, in this order, then id and owner).
PROGRESS = ("status", "attempts", "response_status", "last_error", "last_attempt_at",
            "next_attempt_at", "finished_at", "lease_until")
_LOCK = 0x616C65727473  # PostgreSQL advisory lock for creating the table ("alerts")
_RETRIES = 20  # a statement that fails is retried every 0.5 s this often, then given up
# Finished deliveries older than this are deleted at start: the log shows the recent ones.
KEEP_S = 30 * 86400


class Outbox:
    """The table over one connection owned by one thread. `post` queues a write and returns;
    `call` runs a read there and gives a future. Every method named `_…` runs on the thread."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema
        self.ph = "%s" if urlsplit(url).scheme in ("postgresql", "postgres") else "?"
        self._conn: Any = None
        self._ops: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...],
                                     concurrent.futures.Future[Any] | None] | None] = \
            queue.Queue()
        self._thread: threading.Thread | None = None

    # -- the event loop's side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-outbox", daemon=True)
        self._thread.start()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self._ops.put((fn, args, None))

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._ops.put((fn, args, fut))
        return fut

    def stop(self, timeout_s: float = 5.0) -> None:
        """Run what is queued, then close (blocking: call it in a thread)."""
        if self._thread is not None:
            self._ops.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    # -- statements (run on the thread) -----------------------------------------------------------

    def insert(self, row: Sequence[Any]) -> None:
        marks = ", ".join([self.ph] * len(COLUMNS))
        self._write(f"INSERT INTO alert_deliveries ({', '.join(COLUMNS)}) VALUES ({marks}) "
                    "ON CONFLICT (id) DO NOTHING", [row])

    def progress(self, row_id: str, owner: str, values: Sequence[Any]) -> None:
        sets = ", ".join(f"{c} = {self.ph}" for c in PROGRESS)
        self._write(f"UPDATE alert_deliveries SET {sets} WHERE id = {self.ph} "
                    f"AND owner = {self.ph}", [(*values, row_id, owner)])

    def renew(self, owner: str, until: float) -> None:
        self._write(f"UPDATE alert_deliveries SET lease_until = {self.ph} WHERE owner = "
                    f"{self.ph} AND finished_at IS NULL", [(until, owner)])

    def adopt(self, owner: str, now: float, until: float, limit: int) -> list[dict[str, Any]]:
        """Claim up to `limit` unfinished rows whose lease ran out; their rows."""
        ph = self.ph
        q = (f"UPDATE alert_deliveries SET owner = {ph}, lease_until = {ph} WHERE id IN "
             f"(SELECT id FROM alert_deliveries WHERE finished_at IS NULL AND lease_until < {ph}"
             f" ORDER BY created_at LIMIT {ph}) AND finished_at IS NULL AND lease_until < {ph} "
             f"RETURNING {', '.join(COLUMNS)}")
        rows = self._transaction(lambda conn: conn.execute(
            q, (owner, until, now, limit, now)).fetchall())
        return [dict(zip(COLUMNS, r, strict=True)) for r in rows]

    def recent(self, limit: int) -> list[dict[str, Any]]:
        rows = self._transaction(lambda conn: conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM alert_deliveries ORDER BY created_at DESC "
            f"LIMIT {self.ph}", (limit,)).fetchall())
        return [dict(zip(COLUMNS, r, strict=True)) for r in rows]

    def prune(self, before: float) -> None:
        self._write(f"DELETE FROM alert_deliveries WHERE finished_at IS NOT NULL AND "
                    f"finished_at < {self.ph}", [(before,)])

    # -- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._ops.get()
            if item is None:
                break
            fn, args, fut = item
            if fut is not None and not fut.set_running_or_notify_cancel():
                continue  # its caller stopped waiting (a dispatcher closing)
            for attempt in range(_RETRIES):
                try:
                    out = fn(*args)
                except Exception as e:
                    self._drop_connection()
                    last = attempt == _RETRIES - 1 or fut is not None
                    if last:
                        log.warning("alert outbox: %s failed (%s: %s)", fn.__name__,
                                    type(e).__name__, e)
                        if fut is not None:
                            fut.set_exception(e)
                        break
                    time.sleep(0.5)
                else:
                    if fut is not None:
                        fut.set_result(out)
                    break
        self._drop_connection()

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._open_pg() if self.ph == "%s" else self._open_sqlite()
        return self._conn

    def _open_sqlite(self) -> sqlite3.Connection:
        path = path_of(self.url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA.format(text="TEXT", int="INTEGER", real="REAL"))
        return conn

    def _open_pg(self) -> psycopg.Connection[Any]:
        # Imported here: a SQLite ledger never loads psycopg (11 MB resident).
        from gateway.accounting.ledger_postgres import pg_connect

        return pg_connect(self.url, schema=self.schema, application_name="gateway-alerts",
                          create=lambda c: c.execute(_SCHEMA.format(  # type: ignore[arg-type]
                              text="text", int="integer", real="double precision")),
                          lock=_LOCK)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                pass

    def _transaction(self, fn: Callable[[Any], Any]) -> Any:
        conn = self._connection()
        if self.ph == "%s":
            with conn.transaction():
                return fn(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
            conn.execute("COMMIT")
            return out
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write(self, q: str, rows: list[Sequence[Any]]) -> None:
        def run(conn: Any) -> None:
            if self.ph == "%s":
                with conn.cursor() as cur:
                    cur.executemany(q, rows)
            else:
                conn.executemany(q, rows)
        self._transaction(run)
