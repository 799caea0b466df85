"""The ``gpu_periods`` table: when each GPU-hour priced deployment was in force, per gateway.

One row per (gateway process, deployment, price): written when a process loads the deployment
(start-up, or a reload that adds it, un-drains it or changes its price), its ``ended`` moved
forward by each heartbeat, and set a last time when the deployment leaves (reload, drain,
shutdown). A process that crashes leaves ``ended`` at its last heartbeat. Rows are upserted
by ``period_id``, so a write that failed is simply repeated by the next heartbeat.

The table lives in the ledger database, beside the ledger's tables, but this module creates
and writes it on its own connection (the ledger writer's belongs to the writer thread). The
SQL is the same for SQLite and PostgreSQL; only column types and placeholders differ, as in
``ledger.py``. Times are ISO-8601 UTC text in SQLite (text order is time order), timestamptz
in PostgreSQL; the price is exact decimal text / NUMERIC.

    store = open_period_store(url, schema)        # create=False: reports, never creates
    store.write([GpuPeriod(...), ...])            # one transaction
    store.read(begin, end)                        # periods overlapping [begin, end)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.accounting.gpu_billing import GpuPeriod, provisioned_before
from gateway.accounting.ledger import LedgerUnavailable, redact
from gateway.accounting.ledger_sqlite import path_of
from gateway.accounting.pricing import as_utc, plain

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpu_periods (
    period_id {text} PRIMARY KEY, deployment {text} NOT NULL, provider {text} NOT NULL,
    cost_per_hour {money} NOT NULL, since {time}, started {time} NOT NULL,
    ended {time} NOT NULL, replica {text} NOT NULL
);
CREATE INDEX IF NOT EXISTS gpu_periods_ended ON gpu_periods (ended)
"""
_COLUMNS = ("period_id", "deployment", "provider", "cost_per_hour", "since", "started", "ended",
            "replica")
_READ = "deployment, provider, cost_per_hour, since, started, ended, period_id, replica"


def _upsert(ph: str) -> str:
    return (f"INSERT INTO gpu_periods ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join([ph] * len(_COLUMNS))}) "
            "ON CONFLICT (period_id) DO UPDATE SET ended = excluded.ended")


def _overlapping(ph: str) -> str:
    return f"SELECT {_READ} FROM gpu_periods WHERE ended > {ph} AND started < {ph}"


# Each deployment's first recorded period, with the earliest `gpu_since` any of its periods
# carried: the span between them is billed too (GPUs provisioned before a gateway saw them).
_FIRSTS = (
    f"SELECT {', '.join('p.' + c for c in _READ.split(', '))}, f.since0 FROM gpu_periods p "
    "JOIN (SELECT deployment, MIN(started) AS first, MIN(since) AS since0 FROM gpu_periods "
    "GROUP BY deployment) f ON f.deployment = p.deployment AND p.started = f.first "
    "WHERE f.since0 IS NOT NULL AND f.since0 < f.first"
)


class PeriodStore:
    """The table over one connection, used by one thread at a time (calls are serialised by
    ``GpuLifetimes``, or a report runs alone). Database errors become LedgerUnavailable."""

    ph = "?"

    def __init__(self, url: str, schema: str | None = None, *, create: bool = True) -> None:
        self.url = url
        self.schema = schema
        self.create = create
        self._conn: Any = None
        self._exists = False

    # -- the backend's part -------------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _bind(self, v: Any) -> Any:
        return v

    def _table_exists(self) -> bool:
        raise NotImplementedError

    def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _fetch(self, q: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)``, mapping the driver's connection errors to LedgerUnavailable."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._conn is None:
            self._conn = self._guard(self._connect)

    def write(self, periods: Sequence[GpuPeriod]) -> None:
        """Insert the periods, or move their ``ended`` forward, in one transaction."""
        if not periods:
            return
        rows = [tuple(self._bind(v) for v in (
            p.period_id, p.deployment, p.provider, p.rate_per_hour, p.since, p.started,
            p.ended, p.replica)) for p in periods]
        self.connect()
        self._guard(self._write_rows, rows)

    def read(self, begin: datetime, end: datetime) -> list[GpuPeriod]:
        """Periods overlapping ``[begin, end)``, and the spans from ``gpu_since`` to each
        deployment's first period that overlap it; [] when no gateway ever recorded one."""
        self.connect()
        if not self._exists and not self._guard(self._table_exists):
            return []
        self._exists = True
        params = [self._bind(begin), self._bind(end)]
        out = [self._period(r) for r in self._guard(self._fetch, _overlapping(self.ph), params)]
        for r in self._guard(self._fetch, _FIRSTS, []):
            span = provisioned_before(self._period(r[:-1]), self._time(r[-1]))
            if span is not None and span.started < end and span.ended > begin:
                out.append(span)
        return out

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _period(self, r: Sequence[Any]) -> GpuPeriod:
        dep, provider, rate, since, started, ended, pid, replica = r
        return GpuPeriod(dep, provider, Decimal(str(rate)), self._time(started),
                         self._time(ended), self._time(since) if since is not None else None,
                         pid, replica)

    def _time(self, v: Any) -> datetime:
        return as_utc(datetime.fromisoformat(v) if isinstance(v, str) else v)


class SQLitePeriods(PeriodStore):
    ph = "?"

    def _connect(self) -> sqlite3.Connection:
        path = path_of(self.url)
        if path != ":memory:":
            if not self.create and not Path(path).exists():
                raise LedgerUnavailable(f"no ledger database at {path}")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Used from worker threads one at a time (asyncio.to_thread), hence check_same_thread.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        if self.create:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA.format(text="TEXT", money="TEXT", time="TEXT"))
            self._exists = True
        return conn

    def _bind(self, v: Any) -> Any:
        if isinstance(v, datetime):
            # One fixed format (UTC, microseconds) keeps text comparison chronological.
            return as_utc(v).isoformat(timespec="microseconds")
        return plain(v) if isinstance(v, Decimal) else v

    def _table_exists(self) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpu_periods'"
        return bool(self._conn.execute(q).fetchall())

    def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_upsert("?"), rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _fetch(self, q: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(q, list(params)).fetchall())

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (OSError, sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            raise LedgerUnavailable(f"sqlite ledger {path_of(self.url)}: {e}") from e


def open_period_store(url: str, schema: str | None = None, *, create: bool = True
                      ) -> PeriodStore:
    """The store for a ledger URL (``sqlite:///path`` or ``postgresql://…``)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SQLitePeriods(url, schema, create=create)
    if scheme in ("postgresql", "postgres"):
        # Imported here: a SQLite ledger never loads psycopg (11 MB resident).
        from gateway.accounting.gpu_periods_postgres import PostgresPeriods

        return PostgresPeriods(url, schema, create=create)
    raise ValueError(f"ledger.url {redact(url)!r}: unsupported scheme {scheme!r}; use "
                     "sqlite:///path or postgresql://user@host:port/db")
