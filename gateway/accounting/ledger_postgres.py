"""The ledger in PostgreSQL (psycopg 3, one synchronous connection owned by one thread).

Money is NUMERIC (exact, any scale). A batch is three statements in one transaction, each
taking whole columns as arrays through ``unnest`` — one round trip per table, not per row:
requests (``ON CONFLICT DO NOTHING RETURNING request_id`` tells which are new), the attempts of
the new ones, and the rollup deltas of the new ones (``ON CONFLICT DO UPDATE`` adds them).

The arrays go in PostgreSQL's binary format (``%b``): as text, psycopg quotes each element
after a regular-expression test, and a record cost the writer thread 443 k instructions
against 280 k in binary (batches of 30, callgrind, 2026-12-03; docs/benchmarks.md). Both
formats refuse the same batches: psycopg dumps a list only if its values are of one Python
type, whichever the format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql

from gateway.accounting.ledger import (
    ADDED_COLUMNS,
    ADDED_INDEXES,
    ADDED_ROLLUP_COLUMNS,
    LedgerUnavailable,
    SQLLedger,
    redact,
    savings_backfill_sql,
    savings_update_sql,
    schema_sql,
)
from gateway.accounting.ledger_rows import (
    ATTEMPT_COLUMNS,
    REQUEST_COLUMNS,
    ROLLUP_KEY,
    ROLLUP_VALUES,
    attempt_rows,
    request_row,
    rollup_rows,
    text,
)
from gateway.accounting.records import RequestRecord

TYPES = {"text": "text", "time": "timestamptz", "day": "date", "bool": "boolean",
         "int": "integer", "count": "bigint", "real": "double precision", "money": "numeric",
         "zero": "0"}
SCHEMA = schema_sql(TYPES)
_MONEY = "CAST({} AS numeric)"  # requests.saved_usd is decimal text (an added column)

_REQUEST_TYPES = (
    "text", "timestamptz", "date", "text", "text", "text", "text", "boolean", "integer",
    "float8", "float8", "text", "boolean", "integer", "numeric", "text", "text", "text", "text",
    "text",
)
_ATTEMPT_TYPES = (
    "text", "integer", "text", "text", "text", "text", "integer",
    "bigint", "bigint", "bigint", "bigint", "bigint", "text", "numeric", "float8", "text",
)
_ROLLUP_TYPES = ("date", "text", "text", "text", "text", *["bigint"] * 8, "numeric", "bigint",
                 "numeric")


def _unnest(types: Sequence[str]) -> str:
    return "SELECT * FROM unnest(" + ", ".join(f"%b::{t}[]" for t in types) + ")"


INSERT_REQUESTS = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) {_unnest(_REQUEST_TYPES)} "
    "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)
INSERT_ATTEMPTS = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) {_unnest(_ATTEMPT_TYPES)} "
    "ON CONFLICT (request_id, idx) DO NOTHING"
)
UPSERT_ROLLUPS = (
    f"INSERT INTO rollups_daily ({', '.join((*ROLLUP_KEY, *ROLLUP_VALUES))}) "
    f"{_unnest(_ROLLUP_TYPES)} ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = rollups_daily.{c} + EXCLUDED.{c}" for c in ROLLUP_VALUES)
)
# Several replicas may start at once; CREATE TABLE IF NOT EXISTS is not race-free in
# PostgreSQL, so schema creation is serialised on an advisory lock (any constant will do).
_SCHEMA_LOCK = 0x6C6564676572
# A database that vanishes without closing the connection (a partition, a dead host) must
# not hang the writer thread forever while records pile up in memory: TCP keepalives and a
# user timeout turn it into an error within about half a minute, and the records spill.
KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                             "keepalives_count": 3, "tcp_user_timeout": 30_000}


def pg_connect(url: str, *, schema: str | None, application_name: str,
               connect_timeout: int = 3,
               create: Callable[[psycopg.Connection[Any]], Any] | None = None,
               lock: int = _SCHEMA_LOCK) -> psycopg.Connection[Any]:
    """An autocommit connection with its search_path on ``schema``. With ``create``, the
    schema is created if missing and ``create(conn)`` makes the tables — one replica at a
    time (an advisory lock, ``lock`` per table set). Raises psycopg.OperationalError."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout,
                           application_name=application_name, **KEEPALIVE)
    with conn.transaction():
        if create is not None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        if schema:
            ident = pgsql.Identifier(schema)
            if create is not None:
                conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(pgsql.SQL("SET search_path TO {}").format(ident))
        if create is not None:
            create(conn)
    return conn


def _create_tables(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA)
    _add_columns(conn)
    for statement in ADDED_INDEXES:
        conn.execute(statement)  # type: ignore[arg-type]  # constants, not user input
    _add_rollup_columns(conn)


def _add_columns(conn: psycopg.Connection[Any]) -> None:
    for table, column, kind in ADDED_COLUMNS:
        conn.execute(pgsql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            pgsql.Identifier(table), pgsql.Identifier(column), pgsql.SQL(kind)))


def _has_added_columns(conn: psycopg.Connection[Any]) -> bool:
    """Whether every column of ADDED_COLUMNS exists (one catalog lookup, no lock)."""
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE a.attrelid IN (SELECT to_regclass(t) FROM unnest(%s::text[]) t) "
        "AND NOT a.attisdropped", (sorted({t for t, _, _ in ADDED_COLUMNS}),)).fetchall()
    have = {(r[0], r[1]) for r in rows}
    return all((t, c) in have for t, c, _ in ADDED_COLUMNS)


def _rollup_columns(conn: psycopg.Connection[Any]) -> set[str]:
    """The added rollup columns present (a catalog lookup: every report's connect asks)."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('rollups_daily') "
        "AND attname = ANY(%s) AND NOT attisdropped",
        ([c for c, _ in ADDED_ROLLUP_COLUMNS],)).fetchall()
    return {r[0] for r in rows}


def _add_rollup_columns(conn: psycopg.Connection[Any]) -> None:
    """Add the savings columns to an older ledger's rollups and fill them (inside the schema
    lock's transaction, so one replica does it and the others find it done)."""
    have = _rollup_columns(conn)
    missing = [(c, kind) for c, kind in ADDED_ROLLUP_COLUMNS if c not in have]
    if not missing:
        return
    for column, kind in missing:
        conn.execute(pgsql.SQL("ALTER TABLE rollups_daily ADD COLUMN IF NOT EXISTS {} {}").format(
            pgsql.Identifier(column), pgsql.SQL(kind.format_map(TYPES))))
    rows = conn.execute(savings_backfill_sql("SUM", "0", _MONEY)).fetchall()
    with conn.cursor() as cur:
        cur.executemany(savings_update_sql("%s"), rows)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class PostgresLedger(SQLLedger):
    ph = "%s"
    dec_sum = "SUM"
    zero = "0"
    money = _MONEY

    def __init__(self, url: str, *, schema: str | None = None, create: bool = True,
                 connect_timeout_s: int = 3) -> None:
        self.url = url
        self.schema = schema
        self.create = create
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[Any] | None = None

    def connect(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        try:
            conn = pg_connect(self.url, schema=self.schema, application_name="gateway-ledger",
                              connect_timeout=self.connect_timeout_s,
                              create=_create_tables if self.create else None)
            if not self.create:
                found = conn.execute("SELECT to_regclass('rollups_daily')").fetchone()
        except psycopg.OperationalError as e:
            raise LedgerUnavailable(f"postgres ledger {redact(self.url)}: {e}") from e
        if not self.create and (found is None or found[0] is None):
            # Readers never create the ledger (as with SQLite): a mistyped schema or database
            # says so instead of failing on a missing table.
            conn.close()
            raise LedgerUnavailable(f"no ledger tables in postgres ledger {redact(self.url)} "
                                    f"(schema {self.schema or 'public'})")
        if not self.create:
            # A reader (an upgraded `gateway usage report` or `usage requests`) may be first
            # to open an older ledger: it adds the columns it reads, as a gateway would (the
            # indexes stay the gateway's: building one is no job for a listing).
            try:
                if (len(_rollup_columns(conn)) < len(ADDED_ROLLUP_COLUMNS)
                        or not _has_added_columns(conn)):
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        _add_columns(conn)
                        _add_rollup_columns(conn)
            except psycopg.Error as e:
                conn.close()
                raise LedgerUnavailable(f"postgres ledger {redact(self.url)}: {e}") from e
        self._conn = conn

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one transaction; map psycopg's errors once.

        A lost connection is dropped so the next call reconnects; a serialization failure or
        deadlock (also OperationalError) is simply retried by the writer after its backoff.
        """
        self.connect()
        conn = self._conn
        assert conn is not None
        try:
            with conn.transaction():
                return fn(conn, *args)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if conn.broken or conn.closed:
                self.close()
            raise LedgerUnavailable(f"postgres ledger {redact(self.url)}: {e}") from e

    def _query(self, q: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        def run(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            return conn.execute(q, params).fetchall()  # type: ignore[arg-type]

        return list(self._run(run))

    def _execute(self, conn: psycopg.Connection[Any], q: str, params: Sequence[Any]) -> None:
        conn.execute(q, params)  # type: ignore[arg-type]

    def _executemany(self, conn: psycopg.Connection[Any], q: str,
                     rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(q, rows)  # type: ignore[arg-type]

    # -- writes -------------------------------------------------------------------------------

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], records: list[RequestRecord]) -> int:
        if not records:
            return 0
        req_rows = [request_row(r) for r in records]
        cur = conn.execute(INSERT_REQUESTS, _columns(req_rows, len(REQUEST_COLUMNS)))
        inserted = {row[0] for row in cur.fetchall()}
        new = [r for r in records if text(r.request_id) in inserted]
        if not new:
            return 0
        att_rows = [row for r in new for row in attempt_rows(r)]
        if att_rows:
            conn.execute(INSERT_ATTEMPTS, _columns(att_rows, len(ATTEMPT_COLUMNS)))
        conn.execute(UPSERT_ROLLUPS,
                     _columns(rollup_rows(new), len(ROLLUP_KEY) + len(ROLLUP_VALUES)))
        return len(new)
