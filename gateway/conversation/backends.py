"""How the store reaches each database: opening a connection (and the table), running one
statement, and which driver errors mean "the database cannot be used right now".

The store gives each of its worker threads its own connection, so a backend's connection is
only ever used by one thread at a time; neither is the ledger writer's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.accounting.ledger_sqlite import path_of
from gateway.conversation.sql import SQLITE, Dialect, statements


class Backend(Protocol):
    dialect: Dialect
    # Driver errors that mean the database is unreachable or refusing work, not a bug.
    unavailable: tuple[type[BaseException], ...]
    # Those while connecting: any driver error there (a missing database, no permission to
    # create the table) leaves the store unusable, and says why, rather than a 500 each call.
    connect_errors: tuple[type[BaseException], ...]
    # Where it is, for messages: the path, or the URL without its password.
    where: str

    def connect(self, create: bool) -> Any:
        """A new connection; with ``create``, the table and index are made if missing."""
        ...

    def run(self, conn: Any, q: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement (autocommit): its rows (if any) and the rows it changed."""
        ...

    def run_many(self, conn: Any, q: str, rows: Sequence[Sequence[Any]]
                 ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement per row of parameters, all in one transaction."""
        ...

    def broken(self, conn: Any) -> bool:
        """Whether this connection must be dropped and a new one opened."""
        ...


class SQLiteBackend:
    dialect = SQLITE
    unavailable: tuple[type[BaseException], ...] = (OSError, sqlite3.OperationalError)
    connect_errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error)

    def __init__(self, url: str) -> None:
        self.path = path_of(url)
        self.where = f"sqlite {self.path}"

    def connect(self, create: bool) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # The 10 s busy timeout lets writers in other threads and processes (other stores,
        # the ledger writer) take turns on the database's one write lock.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        try:
            # Two connections opening a new database at once can see "database is locked"
            # while one of them switches it to WAL: SQLite does not apply the busy timeout to
            # that switch, so the set-up is retried here for up to ~5 s.
            for attempt in range(100):
                try:
                    self._set_up(conn, create)
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or attempt == 99:
                        raise
                    time.sleep(0.05)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @staticmethod
    def _set_up(conn: sqlite3.Connection, create: bool) -> None:
        # Only the first connection to a new database switches its mode (it is persistent).
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        # As the ledger: NORMAL in WAL mode survives a process crash; an OS crash may lose
        # the last responses stored, which only makes their ids unknown.
        conn.execute("PRAGMA synchronous=NORMAL")
        if create:
            conn.executescript(statements(SQLITE).schema)

    def run(self, conn: sqlite3.Connection, q: str,
            params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        cur = conn.execute(q, tuple(params))
        rows = cur.fetchall()
        return rows, cur.rowcount

    def run_many(self, conn: sqlite3.Connection, q: str,
                 rows: Sequence[Sequence[Any]]) -> tuple[list[tuple[Any, ...]], int]:
        # The connection is in autocommit mode: without BEGIN each row would be its own commit.
        conn.execute("BEGIN")
        try:
            cur = conn.executemany(q, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [], cur.rowcount

    def broken(self, conn: sqlite3.Connection) -> bool:
        return False
