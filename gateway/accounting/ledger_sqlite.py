"""The ledger in a SQLite file (WAL): the embedded default for one machine.

Money is stored as TEXT holding an exact decimal, never REAL. SQLite cannot add such text
exactly, so each connection registers two Python functions: ``dec_add`` (rollup upserts) and
the aggregate ``dec_sum`` (reports). Times are ISO-8601 UTC text and days ``YYYY-MM-DD``, so
text order is time order.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.accounting.ledger import (
    ADDED_COLUMNS,
    ADDED_INDEXES,
    ADDED_ROLLUP_COLUMNS,
    LedgerUnavailable,
    SQLLedger,
    check_groups,
    grouped_rows,
    rollup_where,
    savings_backfill_sql,
    savings_update_sql,
    schema_sql,
    span,
)
from gateway.accounting.ledger_rows import (
    ATTEMPT_COLUMNS,
    MONEY_VALUES,
    REQUEST_COLUMNS,
    ROLLUP_KEY,
    ROLLUP_VALUES,
    attempt_rows,
    request_row,
    rollup_rows,
    text,
)
from gateway.accounting.pricing import EXACT, plain
from gateway.accounting.records import RequestRecord

TYPES = {"text": "TEXT", "time": "TEXT", "day": "TEXT", "bool": "INTEGER", "int": "INTEGER",
         "count": "INTEGER", "real": "REAL", "money": "TEXT", "zero": "'0'"}
SCHEMA = schema_sql(TYPES)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


# The existence check before an insert lists the batch's ids. Each distinct SQL text is a
# prepared statement kept in the connection's statement cache (128 of them, ~180 bytes of
# SQLite memory per `?`), so one text per batch size held up to 10 MB once the writer had seen
# enough different batch sizes: the soak's RSS grew in steps for 1,000,000 requests
# (docs/benchmarks.md, "Memory over 1,000,000 requests"). The list is padded with NULLs, which
# match nothing, to a power of two: ten texts whatever the batch sizes.
_ID_CHUNK = 512
EXISTING_SQL = {1 << k: "SELECT request_id FROM requests WHERE request_id IN "
                        f"({_marks(1 << k)})" for k in range(_ID_CHUNK.bit_length())}


def _padded(ids: list[str | None]) -> list[str | None]:
    size = 1 << (len(ids) - 1).bit_length()
    return [*ids, *[None] * (size - len(ids))]


INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({_marks(len(REQUEST_COLUMNS))})"
    " ON CONFLICT (request_id) DO NOTHING"
)
INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES ({_marks(len(ATTEMPT_COLUMNS))})"
    " ON CONFLICT (request_id, idx) DO NOTHING"
)
_ADD = [f"{c} = dec_add({c}, excluded.{c})" if c in MONEY_VALUES else f"{c} = {c} + excluded.{c}"
        for c in ROLLUP_VALUES]
UPSERT_ROLLUP = (
    f"INSERT INTO rollups_daily ({', '.join((*ROLLUP_KEY, *ROLLUP_VALUES))}) "
    f"VALUES ({_marks(len(ROLLUP_KEY) + len(ROLLUP_VALUES))}) "
    f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {', '.join(_ADD)}"
)


_CONVERT: dict[type, Any] = {
    datetime: lambda v: v.isoformat(timespec="microseconds"),
    # A batch's records share a day or two: format each once.
    date: functools.lru_cache(maxsize=64)(date.isoformat),
    Decimal: plain,
    bool: int,
}


def _sq(v: Any) -> Any:
    """A Python value as SQLite stores it here. Dispatch on the exact type: this runs for
    every column of every record, and an isinstance chain cost a quarter of the writer."""
    f = _CONVERT.get(type(v))
    return v if f is None else f(v)


# The columns of the inserted rows whose values SQLite cannot bind as they are (datetime, date,
# Decimal) or binds slowly (bool): converted by position, instead of `_sq` over every column
# of every row.
_CONVERTED = {"ts", "day", "cost_usd", "saved_usd", *MONEY_VALUES,
              # bools bind as 0/1, but through sqlite3's adapter look-up, which for a type
              # without an adapter costs a failed attribute look-up: an exact int does not.
              "stream", "client_disconnected"}

# The same look-up for None (most columns' value in a typical row: no error, no TTFT, no
# client id...) cost ~0.3 µs per column. With an adapter registered for NoneType it finds
# one at once; it returns None, which binds as NULL as before. sqlite3 keeps adapters per
# process: this one changes no value for any other user of the module.
sqlite3.register_adapter(type(None), lambda v: v)


def _positions(columns: Sequence[str]) -> tuple[int, ...]:
    return tuple(i for i, c in enumerate(columns) if c in _CONVERTED)


REQUEST_TYPED = _positions(REQUEST_COLUMNS)
ATTEMPT_TYPED = _positions(ATTEMPT_COLUMNS)
ROLLUP_TYPED = _positions((*ROLLUP_KEY, *ROLLUP_VALUES))


def _bound(rows: list[tuple[Any, ...]], typed: tuple[int, ...]) -> list[list[Any]]:
    """`rows` as SQLite binds them, converting only the `typed` positions."""
    out = []
    for row in rows:
        r = list(row)
        for i in typed:
            r[i] = _sq(r[i])
        out.append(r)
    return out


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


# Exact money sums in SQL. Python's `dec_sum` costs a callback and a Decimal per row, most of
# a month-long page's time; instead each decimal text is split into its integer part and its
# fraction as an integer of _SCALE digits, both summed by SQLite in C, and joined here. It is
# exact whenever no value has more than _SCALE decimals or a minus sign (checked per group in
# the same query); otherwise, or if a sum overflows 64 bits, the query runs with `dec_sum`.
_SCALE = 12


def _money_sums(c: str) -> list[str]:
    dot = f"instr({c}, '.')"
    frac = f"substr({c}, {dot} + 1)"
    return [f"SUM(CAST({c} AS INTEGER))",
            f"SUM(CASE WHEN {dot} THEN CAST(substr({frac} || '{'0' * _SCALE}', 1, {_SCALE}) "
            "AS INTEGER) ELSE 0 END)",
            f"MAX(CASE WHEN {dot} THEN length({frac}) ELSE 0 END)",
            f"MAX(substr({c}, 1, 1) = '-')"]


def fast_rollup_sql(group_by: Sequence[str], tenant: str | None) -> str:
    check_groups(group_by)
    cols = ", ".join(group_by)
    sums = [e for c in ROLLUP_VALUES
            for e in (_money_sums(c) if c in MONEY_VALUES else [f"SUM({c})"])]
    q = f"SELECT {', '.join([*group_by, *sums])} FROM rollups_daily " \
        f"WHERE {rollup_where('?', tenant)}"
    return q + (f" GROUP BY {cols} ORDER BY {cols}" if group_by else "")


def _joined(row: Sequence[Any], n_groups: int) -> list[Any] | None:
    """A `fast_rollup_sql` row as group columns then ROLLUP_VALUES; None when not exact."""
    out = list(row[:n_groups])
    i = n_groups
    for c in ROLLUP_VALUES:
        if c not in MONEY_VALUES:
            out.append(row[i])
            i += 1
            continue
        whole, frac, digits, negative = row[i: i + 4]
        i += 4
        if (digits or 0) > _SCALE or negative:
            return None
        out.append(EXACT.add(Decimal(whole or 0), Decimal(frac or 0).scaleb(-_SCALE)))
    return out


def path_of(url: str) -> str:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    p = unquote(urlsplit(url).path)
    return p[1:] if p.startswith("/") else p


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    have = {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
            for t in {table for table, _, _ in ADDED_COLUMNS}}
    return [(t, c, kind) for t, c, kind in ADDED_COLUMNS if c not in have[t]]


def _add_missing_columns(conn: sqlite3.Connection, *, indexes: bool = True) -> None:
    """Add the columns an older ledger lacks, in one write transaction (another process may
    be adding them to the same file: it re-checks inside). Readers pass ``indexes=False``:
    building an index over a large table is the gateway's job, not a listing's."""
    if _missing_columns(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, kind in _missing_columns(conn):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind.upper()}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if indexes:
        for statement in ADDED_INDEXES:
            conn.execute(statement)


def _rollup_columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(rollups_daily)")}


def _add_rollup_columns(conn: sqlite3.Connection) -> None:
    """Add the savings columns to an older ledger's rollups and fill them, in one write
    transaction (another process may be migrating the same file: it re-checks inside)."""
    if all(c in _rollup_columns(conn) for c, _ in ADDED_ROLLUP_COLUMNS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        have = _rollup_columns(conn)
        missing = [(c, kind) for c, kind in ADDED_ROLLUP_COLUMNS if c not in have]
        for column, kind in missing:
            conn.execute(f"ALTER TABLE rollups_daily ADD COLUMN {column} "
                         f"{kind.format_map(TYPES)}")
        if missing:
            rows = conn.execute(savings_backfill_sql("dec_sum", "'0'")).fetchall()
            conn.executemany(savings_update_sql("?"), rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteLedger(SQLLedger):
    ph = "?"
    dec_sum = "dec_sum"
    zero = "'0'"

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
                _add_missing_columns(conn)
            # Readers too: an upgraded `gateway usage report` or `usage requests` reads the
            # new columns of a ledger no upgraded gateway has opened yet.
            if self.create or _rollup_columns(conn):
                if not self.create:
                    _add_missing_columns(conn, indexes=False)
                _add_rollup_columns(conn)
        except (OSError, sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            raise LedgerUnavailable(f"sqlite ledger {self.path}: {e}") from e
        self._conn = conn

    def _tx(self) -> sqlite3.Connection:
        self.connect()
        assert self._conn is not None
        # IMMEDIATE takes the write lock up front: the existence check and the inserts below
        # then see the same database even with other processes writing the same file.
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
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

    def _execute(self, conn: sqlite3.Connection, q: str, params: Sequence[Any]) -> None:
        conn.execute(q, [_sq(p) for p in params])

    def _executemany(self, conn: sqlite3.Connection, q: str,
                     rows: list[tuple[Any, ...]]) -> None:
        conn.executemany(q, [tuple(map(_sq, row)) for row in rows])

    def rollup_totals(self, start: date, end: date, tenant: str | None,
                      group_by: Sequence[str]) -> list[dict[str, Any]]:
        self.connect()
        assert self._conn is not None
        params = [_sq(p) for p in span(start, end, tenant)]
        try:
            rows = self._conn.execute(fast_rollup_sql(group_by, tenant), params).fetchall()
        except sqlite3.OperationalError as e:
            if "overflow" not in str(e):
                raise LedgerUnavailable(f"sqlite ledger {self.path}: {e}") from e
            return super().rollup_totals(start, end, tenant, group_by)
        joined = [_joined(r, len(group_by)) for r in rows]
        if any(j is None for j in joined):
            return super().rollup_totals(start, end, tenant, group_by)
        return grouped_rows(joined, group_by)  # type: ignore[arg-type]

    # -- writes -------------------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, records: list[RequestRecord]) -> int:
        existing: set[str] = set()
        ids = [text(r.request_id) for r in records]
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = _padded(ids[i : i + _ID_CHUNK])
            existing.update(row[0] for row in conn.execute(EXISTING_SQL[len(chunk)], chunk))
        new = [r for r in records if text(r.request_id) not in existing]
        if not new:
            return 0
        conn.executemany(INSERT_REQUEST, _bound([request_row(r) for r in new], REQUEST_TYPED))
        conn.executemany(INSERT_ATTEMPT, _bound([row for r in new for row in attempt_rows(r)],
                                                ATTEMPT_TYPED))
        conn.executemany(UPSERT_ROLLUP, _bound(rollup_rows(new), ROLLUP_TYPED))
        return len(new)
