"""The conversation store: each Responses API response, per tenant, in the ledger's database.

`previous_response_id` rebuilds a conversation from it on every backend, and
`GET/DELETE /v1/responses/{id}` and `…/input_items` read it. It lives beside the ledger's
tables (`policy.ledger.url`, `policy.ledger.schema_name`) in its own table, which it creates
itself, on its own connections: the ledger writer's connection belongs to the writer thread.

    store = ResponseStore.from_policy(policy)
    await store.start()                    # a database that is down is not fatal
    await store.put(StoredResponse(...))   # StoreUnavailable when it cannot store
    await store.chain(tenant, previous_id) # the conversation up to it, oldest first

Every call is one statement (``purge_expired`` one per batch) run on a small pool of worker
threads, each with its own connection, so the event loop never blocks on the database and
a slow query holds up only its own worker. A database that cannot be reached raises
StoreUnavailable — from reads too, so a client gets a 503 rather than a wrong 404 — and the
next call tries again (at most once per ``reconnect_backoff_s``, so a dead database costs
one connect timeout, not one per request). Only ids reach log lines, never stored content.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import pydantic_core

from gateway.accounting.ledger import redact
from gateway.conversation.backends import Backend, PostgresBackend, SQLiteBackend
from gateway.conversation.input_items import page
from gateway.conversation.records import StoredResponse, StoreUnavailable
from gateway.conversation.sql import COLUMNS, JSON_COLUMNS, PURGE_BATCH, statements

if TYPE_CHECKING:
    from gateway.policy.models import Policy

log = logging.getLogger("gateway.responses")
T = TypeVar("T")
Rows = list[tuple[Any, ...]]


def open_backend(url: str, schema: str | None = None) -> Backend:
    """The backend for a ledger URL: ``sqlite:///path`` or ``postgresql://…``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SQLiteBackend(url)
    if scheme in ("postgresql", "postgres"):
        return PostgresBackend(url, schema)
    raise ValueError(f"ledger.url {redact(url)!r}: unsupported scheme {scheme!r}; use "
                     "sqlite:///path or postgresql://user@host:port/db")


def _row(r: StoredResponse) -> tuple[Any, ...]:
    return tuple(pydantic_core.to_json(getattr(r, c)).decode() if c in JSON_COLUMNS
                 else getattr(r, c) for c in COLUMNS)


def _record(row: Sequence[Any]) -> StoredResponse:
    v = dict(zip(COLUMNS, row, strict=True))
    for c in JSON_COLUMNS:
        v[c] = pydantic_core.from_json(v[c])
    v["created_at"] = int(v["created_at"])
    v["expires_at"] = None if v["expires_at"] is None else int(v["expires_at"])
    return StoredResponse(**v)


class ResponseStore:
    """Stored responses over SQLite or PostgreSQL (chosen by the URL's scheme)."""

    def __init__(self, url: str, schema: str | None = None, *, workers: int = 4,
                 reconnect_backoff_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._backend = open_backend(url, schema)
        self._sql = statements(self._backend.dialect)
        self._clock = clock
        self._backoff_s = reconnect_backoff_s
        if isinstance(self._backend, SQLiteBackend) and self._backend.path == ":memory:":
            workers = 1  # each connection to :memory: would be a database of its own
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="gateway-responses")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._created = False
        self._down = False
        self._retry_at = 0.0  # monotonic; no new connection is tried before it
        self._closed = False

    @classmethod
    def from_policy(cls, policy: Policy) -> ResponseStore:
        return cls(policy.ledger.url, policy.ledger.schema_name)

    # -- the API (async; each call runs on a worker thread) -----------------------------------

    async def start(self) -> None:
        """Connect and create the table; a database that is down is logged, not raised."""
        try:
            await self._submit(self._connection)
        except StoreUnavailable:
            pass  # logged by _failed; the next call tries again

    async def put(self, r: StoredResponse) -> None:
        await self._submit(lambda: self._execute(self._sql.put, _row(r)))

    async def get(self, tenant: str, id: str) -> StoredResponse | None:
        """None when missing, another tenant's or expired — it never says which."""
        rows, _ = await self._submit(self._execute, self._sql.get, (tenant, id, self._now()))
        return _record(rows[0]) if rows else None

    async def delete(self, tenant: str, id: str) -> bool:
        _, n = await self._submit(self._execute, self._sql.delete, (tenant, id, self._now()))
        return n > 0

    async def chain(self, tenant: str, id: str, max_turns: int = 100
                    ) -> list[StoredResponse] | None:
        """The responses from the first of the conversation to ``id``, oldest first (at most
        the newest ``max_turns``); None when ``id`` itself is not found. A missing, expired or
        other tenant's link ends the walk: the chain is then the part after it."""
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1 (got {max_turns})")
        now = self._now()
        rows, _ = await self._submit(self._execute, self._sql.chain,
                                     (tenant, id, now, tenant, max_turns, now))
        return [_record(r) for r in rows] if rows else None

    async def input_items(self, tenant: str, id: str, *, after: str | None,
                          before: str | None, limit: int, order: Literal["asc", "desc"]
                          ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of the response's input items, each with its ``id``, and whether more
        remain (OpenAI's ``GET /v1/responses/{id}/input_items``); None when not found.
        Raises InvalidRequest (400) for a bad ``limit``/``order`` or an unknown cursor."""
        def read() -> tuple[list[dict[str, Any]], bool] | None:
            rows, _ = self._execute(self._sql.input_items, (tenant, id, self._now()))
            if not rows:
                return None
            items = pydantic_core.from_json(rows[0][0])
            return page(id, items, after=after, before=before, limit=limit, order=order)

        return await self._submit(read)

    async def purge_expired(self) -> int:
        """Delete every expired response (in batches); how many went."""
        def purge() -> int:
            now, total = self._now(), 0
            while True:
                _, n = self._execute(self._sql.purge, (now, PURGE_BATCH))
                total += n
                if n < PURGE_BATCH:
                    return total

        n = await self._submit(purge)
        if n:
            log.info("purged %d expired stored responses", n)
        return n

    async def close(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    # -- on the worker threads ----------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock())

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the response store is closed")
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as e:  # shut down between the check and the submit
            raise StoreUnavailable("the response store is closed") from e
        return await fut

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        b = self._backend
        if time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"response store ({b.where}) is unavailable; it is retried "
                                   f"{self._backoff_s:g} s after the last failure")
        try:
            conn = b.connect(create=not self._created)
        except b.connect_errors as e:
            self._retry_at = time.monotonic() + self._backoff_s
            raise self._failed(e) from e
        self._created = True
        with self._lock:
            self._conns.append(conn)
        self._local.conn = conn
        self._recovered()
        return conn

    def _execute(self, q: str, params: Sequence[Any]) -> tuple[Rows, int]:
        conn = self._connection()
        try:
            out = self._backend.run(conn, q, params)
        except self._backend.unavailable as e:
            if self._backend.broken(conn):
                self._drop(conn)  # the next call on this thread reconnects
            raise self._failed(e) from e
        if self._down:
            self._recovered()
        return out

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except Exception:  # already broken; closing is only tidiness
            pass

    def _failed(self, e: BaseException) -> StoreUnavailable:
        err = StoreUnavailable(f"response store ({self._backend.where}): {e}")
        with self._lock:
            first, self._down = not self._down, True
        if first:  # one line per outage, not one per request
            log.warning("response store unavailable: %s", err)
        return err

    def _recovered(self) -> None:
        with self._lock:
            was, self._down = self._down, False
        if was:
            log.info("response store reachable again (%s)", self._backend.where)
