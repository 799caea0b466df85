"""The response store's PostgreSQL backend (see gateway/conversation/backends.py): its own
module so that a SQLite ledger never imports psycopg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from gateway.accounting.ledger import redact
from gateway.accounting.ledger_postgres import pg_connect
from gateway.conversation.sql import POSTGRES, statements

# Replicas starting together would race on CREATE TABLE IF NOT EXISTS (not race-free in
# PostgreSQL): creation is serialised on an advisory lock, one constant per table set.
_SCHEMA_LOCK = 0x72657370  # "resp"


class PostgresBackend:
    dialect = POSTGRES
    # A read-only database (a standby after failover) cannot store either.
    unavailable: tuple[type[BaseException], ...] = (
        psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction)
    connect_errors: tuple[type[BaseException], ...] = (OSError, psycopg.Error)

    def __init__(self, url: str, schema: str | None, connect_timeout_s: int = 3) -> None:
        self.url = url
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.where = f"postgres {redact(url)}"

    def connect(self, create: bool) -> psycopg.Connection[Any]:
        schema_sql = statements(POSTGRES).schema
        # Keepalives (pg_connect's) turn a vanished database into an error in about half a
        # minute instead of a request waiting on it forever.
        return pg_connect(self.url, schema=self.schema, application_name="gateway-responses",
                          connect_timeout=self.connect_timeout_s,
                          create=(lambda c: c.execute(schema_sql)) if create else None,
                          lock=_SCHEMA_LOCK)

    def run(self, conn: psycopg.Connection[Any], q: str,
            params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        cur = conn.execute(q, params)  # type: ignore[arg-type]  # the SQL is built, not literal
        rows = cur.fetchall() if cur.description is not None else []
        return rows, cur.rowcount

    def run_many(self, conn: psycopg.Connection[Any], q: str,
                 rows: Sequence[Sequence[Any]]) -> tuple[list[tuple[Any, ...]], int]:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(q, rows)  # type: ignore[arg-type]  # the SQL is built, not literal
            return [], cur.rowcount

    def broken(self, conn: psycopg.Connection[Any]) -> bool:
        return conn.broken or conn.closed
