"""The ledger in a SQLite file (WAL): the embedded default for one machine.

Money is stored as TEXT holding an exact decimal, never REAL. SQLite cannot add such text
exactly, so each connection registers two Python functions: ``dec_add`` (rollup upserts) and
the aggregate ``dec_sum`` (reports). Times are ISO-8601 UTC text and days ``YYYY-MM-DD``, so
text order is time order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.accounting import ledger as sql
from gateway.accounting.ledger import LedgerUnavailable
from gateway.accounting.ledger_rows import (
    ATTEMPT_COLUMNS,
    REQUEST_COLUMNS,
    ROLLUP_KEY,
    ROLLUP_VALUES,
    attempt_rows,
    day_of,
    dedupe,
    record_from_rows,
    request_row,
    rollup_deltas,
    text,
)
from gateway.accounting.pricing import EXACT, plain
from gateway.accounting.records import RequestRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, ts TEXT NOT NULL, day TEXT NOT NULL, tenant TEXT NOT NULL,
    key_id TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL, stream INTEGER NOT NULL,
    status INTEGER NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL, error_code TEXT,
    client_disconnected INTEGER NOT NULL, attempts INTEGER NOT NULL, cost_usd TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_day_tenant ON requests (day, tenant);
CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL, idx INTEGER NOT NULL, deployment TEXT NOT NULL,
    provider TEXT NOT NULL, upstream_model TEXT NOT NULL, outcome TEXT NOT NULL, status INTEGER,
    input_uncached INTEGER NOT NULL, cache_read INTEGER NOT NULL, cache_write INTEGER NOT NULL,
    output INTEGER NOT NULL, reasoning INTEGER NOT NULL, usage_source TEXT,
    cost_usd TEXT NOT NULL, duration_ms REAL NOT NULL, error TEXT,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS rollups_daily (
    day TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL, deployment TEXT NOT NULL,
    provider TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
    attempts INTEGER NOT NULL, input_uncached INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, output INTEGER NOT NULL, reasoning INTEGER NOT NULL,
    cost_usd TEXT NOT NULL,
    PRIMARY KEY (day, tenant, model, deployment, provider)
);
"""


def _marks(n: int) -> str:
    return ", ".join("?" * n)


INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({_marks(len(REQUEST_COLUMNS))})"
    " ON CONFLICT (request_id) DO NOTHING"
)
INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES ({_marks(len(ATTEMPT_COLUMNS))})"
    " ON CONFLICT (request_id, idx) DO NOTHING"
)
_ADD = [f"{c} = {c} + excluded.{c}" for c in ROLLUP_VALUES if c != "cost_usd"]
UPSERT_ROLLUP = (
    f"INSERT INTO rollups_daily ({', '.join((*ROLLUP_KEY, *ROLLUP_VALUES))}) "
    f"VALUES ({_marks(len(ROLLUP_KEY) + len(ROLLUP_VALUES))}) "
    f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {', '.join(_ADD)}, "
    "cost_usd = dec_add(cost_usd, excluded.cost_usd)"
)


def _sq(v: Any) -> Any:
    """A Python value as SQLite stores it here."""
    if isinstance(v, datetime):
        return v.isoformat(timespec="microseconds")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return plain(v)
    if isinstance(v, bool):
        return int(v)
    return v


def _dec_add(a: Any, b: Any) -> str:
    return plain(EXACT.add(Decimal(str(a)), Decimal(str(b))))


class _DecSum:
    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, v: Any) -> None:
        if v is not None:
            self.total = EXACT.add(self.total, Decimal(str(v)))

    def finalize(self) -> str:
        return plain(self.total)


def path_of(url: str) -> str:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    p = unquote(urlsplit(url).path)
    return p[1:] if p.startswith("/") else p


class SQLiteLedger:
    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.path = path_of(url)
        self.create = create
        self._conn: sqlite3.Connection | None = None

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self._conn is not None:
            return
        try:
            if self.path != ":memory:":
                if not self.create and not Path(self.path).exists():
                    raise LedgerUnavailable(f"no ledger database at {self.path}")
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives process crashes; only an OS crash can lose the last
            # transactions, and the writer's spill file is the backstop for those anyway.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.create_function("dec_add", 2, _dec_add, deterministic=True)
            conn.create_aggregate("dec_sum", 1, _DecSum)  # type: ignore[arg-type]
            if self.create:
                conn.executescript(SCHEMA)
        except (OSError, sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            raise LedgerUnavailable(f"sqlite ledger {self.path}: {e}") from e
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _tx(self) -> sqlite3.Connection:
        self.connect()
        assert self._conn is not None
        # IMMEDIATE takes the write lock up front: the existence check and the inserts below
        # then see the same database even with other processes writing the same file.
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def _run(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one write transaction; map SQLite's errors once."""
        try:
            conn = self._tx()
        except sqlite3.OperationalError as e:
            raise LedgerUnavailable(f"sqlite ledger {self.path}: {e}") from e
        try:
            out = fn(conn, *args)
            conn.execute("COMMIT")
            return out
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError) or type(e) is sqlite3.DatabaseError:
                raise LedgerUnavailable(f"sqlite ledger {self.path}: {e}") from e
            raise

    def _query(self, q: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.connect()
        assert self._conn is not None
        try:
            return self._conn.execute(q, [_sq(p) for p in params]).fetchall()
        except sqlite3.OperationalError as e:
            raise LedgerUnavailable(f"sqlite ledger {self.path}: {e}") from e

    # -- writes -------------------------------------------------------------------------------

    def write(self, records: Sequence[RequestRecord]) -> int:
        return int(self._run(self._insert, dedupe(records)))

    @staticmethod
    def _insert(conn: sqlite3.Connection, records: list[RequestRecord]) -> int:
        existing: set[str] = set()
        ids = [text(r.request_id) for r in records]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT request_id FROM requests WHERE request_id IN ({_marks(len(chunk))})"
            existing.update(row[0] for row in conn.execute(q, chunk))
        new = [r for r in records if text(r.request_id) not in existing]
        if not new:
            return 0
        conn.executemany(INSERT_REQUEST, [tuple(map(_sq, request_row(r))) for r in new])
        conn.executemany(
            INSERT_ATTEMPT, [tuple(map(_sq, row)) for r in new for row in attempt_rows(r)]
        )
        conn.executemany(UPSERT_ROLLUP, [
            (*map(_sq, key), *(_sq(getattr(d, c)) for c in ROLLUP_VALUES))
            for key, d in rollup_deltas(new)
        ])
        return len(new)

    def update_costs(self, records: Sequence[RequestRecord]) -> None:
        if not records:
            return
        days = [day_of(r) for r in records]

        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE attempts SET cost_usd = ? WHERE request_id = ? AND idx = ?",
                [(plain(a.cost_usd), r.request_id, i)
                 for r in records for i, a in enumerate(r.attempts)],
            )
            conn.executemany(
                "UPDATE requests SET cost_usd = ? WHERE request_id = ?",
                [(plain(r.cost_usd), r.request_id) for r in records],
            )
            self._rebuild(conn, min(days), max(days))

        self._run(apply)

    def rebuild_rollups(self, start: date, end: date) -> None:
        self._run(self._rebuild, start, end)

    @staticmethod
    def _rebuild(conn: sqlite3.Connection, start: date, end: date) -> None:
        span = (start.isoformat(), end.isoformat())
        conn.execute("DELETE FROM rollups_daily WHERE day >= ? AND day <= ?", span)
        conn.execute(sql.rebuild_sql("?", "dec_sum", "'0'"), span)

    # -- reads --------------------------------------------------------------------------------

    def _grouped(self, q: str, start: date, end: date, tenant: str | None,
                 group_by: Sequence[str]) -> list[dict[str, Any]]:
        params: list[Any] = [start, end] + ([tenant] if tenant is not None else [])
        out = []
        for row in self._query(q, params):
            group = dict(zip(group_by, row[: len(group_by)], strict=True))
            if "day" in group:
                group["day"] = date.fromisoformat(group["day"])
            out.append(sql.totals_row(group, row[len(group_by):]))
        return out

    def rollup_totals(self, start: date, end: date, tenant: str | None,
                      group_by: Sequence[str]) -> list[dict[str, Any]]:
        q = sql.rollup_sql(group_by, tenant, "?", "dec_sum")
        return self._grouped(q, start, end, tenant, group_by)

    def direct_totals(self, start: date, end: date, tenant: str | None,
                      group_by: Sequence[str]) -> list[dict[str, Any]]:
        q = sql.direct_sql(group_by, tenant, "?", "dec_sum", "'0'")
        return self._grouped(q, start, end, tenant, group_by)

    def deployment_tokens(self, start: date, end: date,
                          deployments: Sequence[str]) -> dict[tuple[str, str], int]:
        if not deployments:
            return {}
        rows = self._query(sql.tokens_sql(len(deployments), "?"), [start, end, *deployments])
        return {(d, t): int(n or 0) for d, t, n in rows}

    def read_records(self, start: date, end: date,
                     tenant: str | None = None) -> Iterator[RequestRecord]:
        where = "day >= ? AND day <= ?" + (" AND tenant = ?" if tenant is not None else "")
        params: list[Any] = [start, end] + ([tenant] if tenant is not None else [])
        reqs = self._query(
            f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests WHERE {where} "
            "ORDER BY ts, request_id", params)
        atts: dict[str, list[dict[str, Any]]] = {}
        for row in self._query(
            f"SELECT {', '.join('a.' + c for c in ATTEMPT_COLUMNS)} FROM attempts a "
            f"JOIN requests r ON r.request_id = a.request_id WHERE "
            f"{where.replace('day', 'r.day').replace('tenant', 'r.tenant')}", params):
            d = dict(zip(ATTEMPT_COLUMNS, row, strict=True))
            atts.setdefault(d["request_id"], []).append(d)
        for row in reqs:
            d = dict(zip(REQUEST_COLUMNS, row, strict=True))
            yield record_from_rows(d, atts.get(d["request_id"], []))
