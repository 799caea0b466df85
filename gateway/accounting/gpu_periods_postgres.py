"""The ``gpu_periods`` table in PostgreSQL (see gateway/accounting/gpu_periods.py): its own
module so that a SQLite ledger never imports psycopg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from gateway.accounting.gpu_periods import _SCHEMA, PeriodStore, _upsert
from gateway.accounting.ledger import LedgerUnavailable, redact
from gateway.accounting.ledger_postgres import pg_connect

# Replicas starting together would race on CREATE TABLE IF NOT EXISTS (not race-free in
# PostgreSQL): creation is serialised on an advisory lock, as the ledger's own tables are.
_SCHEMA_LOCK = 0x67707570  # "gpup"
_PG_SCHEMA = _SCHEMA.format(text="text", money="numeric", time="timestamptz")


class PostgresPeriods(PeriodStore):
    ph = "%s"

    def _connect(self) -> psycopg.Connection[Any]:
        # Keepalives (pg_connect's) keep a vanished database from holding a heartbeat, and
        # with it shutdown, for long.
        conn = pg_connect(self.url, schema=self.schema, application_name="gateway-gpu-periods",
                          create=(lambda c: c.execute(_PG_SCHEMA)) if self.create else None,
                          lock=_SCHEMA_LOCK)
        if self.create:
            self._exists = True
        return conn

    def _table_exists(self) -> bool:
        row = self._conn.execute("SELECT to_regclass('gpu_periods')").fetchone()
        return row is not None and row[0] is not None

    def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(_upsert("%s"), rows)

    def _fetch(self, q: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(q, params).fetchall())

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self.close()  # the next call reconnects
            raise LedgerUnavailable(f"postgres ledger {redact(self.url)}: {e}") from e
