"""The conversation store: each Responses API response, per tenant, in the ledger's database.

`previous_response_id` rebuilds a conversation from it on every backend, and
`GET/DELETE /v1/responses/{id}` and `…/input_items` read it. It lives beside the ledger's
tables (`policy.ledger.url`, `policy.ledger.schema_name`) in its own table, which it creates
itself, on its own connections: the ledger writer's connection belongs to the writer thread.

    store = ResponseStore.from_policy(policy)
    await store.start()                    # a database that is down is not fatal
    await store.put(StoredResponse(...))   # StoreUnavailable when it cannot store
    store.put_later(StoredResponse(...))   # readable here at once, written with the next batch
    await store.chain(tenant, previous_id) # the conversation up to it, oldest first

Every call is one statement (``purge_expired`` one per batch) run on a small pool of worker
threads, each with its own connection, so the event loop never blocks on the database and
a slow query holds up only its own worker. A database that cannot be reached raises
StoreUnavailable — from reads too, so a client gets a 503 rather than a wrong 404 — and the
next call tries again (at most once per ``reconnect_backoff_s``, so a dead database costs
one connect timeout, not one per request). Only ids reach log lines, never stored content.

``put_later`` is the request path's put: the response is held in memory (`pending.py`), where
every read on this replica finds it at once, and a single writer task writes whatever is held
in one transaction per batch — the next batch gathers while one is written, so there is no
wait when idle and one commit per batch under load. A batch that fails for an outage is kept
and retried; ``close`` writes what is held before the store shuts.
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
from gateway.conversation.backends import Backend, SQLiteBackend
from gateway.conversation.input_items import page
from gateway.conversation.pending import PendingResponses
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
        # Imported here: a SQLite ledger never loads psycopg (11 MB resident).
        from gateway.conversation.backend_postgres import PostgresBackend

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
        self._pending = PendingResponses()
        self._writer: asyncio.Task[None] | None = None
        self._drop_logged = -1e9  # monotonic; drops are logged at most every 10 s

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

    def put_later(self, r: StoredResponse) -> None:
        """Store `r` without waiting: readable on this replica at once, in the database once
        its batch commits (other replicas see it then). Needs a running event loop."""
        if self._closed:
            raise StoreUnavailable("the response store is closed")
        dropped = self._pending.dropped
        self._pending.add(r)
        if self._pending.dropped > dropped and time.monotonic() >= self._drop_logged + 10.0:
            self._drop_logged = time.monotonic()
            log.warning("responses: %d held responses dropped so far (the database has been "
                        "unreachable while %d were waiting)", self._pending.dropped,
                        self._pending.limit)
        self._ensure_writer()

    def _ensure_writer(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        writer = self._writer
        if writer is not None and not writer.done() and writer.get_loop() is loop:
            return writer
        if self._pending.writing:
            # The writer was cut off mid-batch (cancelled, or its loop ended: a test client's):
            # that batch is written again.
            self._pending.failed()
        self._writer = loop.create_task(self._write_pending())
        return self._writer

    @property
    def pending(self) -> int:
        """Responses put but not yet in the database."""
        return len(self._pending)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every response put so far is written (or `timeout` passes): whether
        none is left pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._pending):
            writer = self._ensure_writer()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.wait({writer}, timeout=left)
        return True

    async def _write_pending(self) -> None:
        while self._pending.queued:
            batch = self._pending.take()
            try:
                await self._submit(self._put_many, batch)
            except StoreUnavailable:
                # Logged once per outage (`_failed`); kept, and tried again.
                self._pending.failed()
                if self._closed:
                    return
                await asyncio.sleep(self._backoff_s)
                continue
            except Exception:  # a bug, or a value that cannot be stored: never retried
                n = self._pending.lost()
                log.exception("responses: could not store a batch of %d; follow-ups naming "
                              "them will not find them", n)
                continue
            self._pending.written()

    async def get(self, tenant: str, id: str) -> StoredResponse | None:
        """None when missing, another tenant's or expired — it never says which."""
        held = self._pending.find(tenant, id, self._now())
        if held is not None:
            return held
        rows, _ = await self._submit(self._execute, self._sql.get, (tenant, id, self._now()))
        return _record(rows[0]) if rows else None

    async def delete(self, tenant: str, id: str) -> bool:
        queued, writing = self._pending.discard(tenant, id)
        deadline = time.monotonic() + 5.0
        while writing and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # its batch lands first, then its row goes
            writing = (tenant, id) in self._pending.writing
        _, n = await self._submit(self._execute, self._sql.delete, (tenant, id, self._now()))
        return queued or n > 0

    async def chain(self, tenant: str, id: str, max_turns: int = 100
                    ) -> list[StoredResponse] | None:
        """The responses from the first of the conversation to ``id``, oldest first (at most
        the newest ``max_turns``); None when ``id`` itself is not found. A missing, expired or
        other tenant's link ends the walk: the chain is then the part after it."""
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1 (got {max_turns})")
        now = self._now()
        held, rest = self._pending.walk(tenant, id, now, max_turns)
        newest = held[::-1]
        if rest is None:
            return newest
        rows, _ = await self._submit(self._execute, self._sql.chain,
                                     (tenant, rest, now, tenant, max_turns - len(held), now))
        return [*(_record(r) for r in rows), *newest] if rows or newest else None

    async def input_items(self, tenant: str, id: str, *, after: str | None,
                          before: str | None, limit: int, order: Literal["asc", "desc"]
                          ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of the response's input items, each with its ``id``, and whether more
        remain (OpenAI's ``GET /v1/responses/{id}/input_items``); None when not found.
        Raises InvalidRequest (400) for a bad ``limit``/``order`` or an unknown cursor."""
        held = self._pending.find(tenant, id, self._now())
        if held is not None:
            return page(id, held.input_items, after=after, before=before, limit=limit,
                        order=order)

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

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Write what is pending (for at most `flush_timeout_s`), then close."""
        if len(self._pending) and not await self.flush(flush_timeout_s):
            log.warning("responses: %d stored responses could not be written before "
                        "shutdown; follow-ups naming them will not find them",
                        len(self._pending))
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
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

    def _put_many(self, rs: list[StoredResponse]) -> None:
        self._execute(self._sql.put, [_row(r) for r in rs], many=True)

    def _execute(self, q: str, params: Sequence[Any], many: bool = False) -> tuple[Rows, int]:
        """One statement, or (`many`) one statement per row of `params` in one transaction."""
        conn = self._connection()
        try:
            out = self._backend.run_many(conn, q, params) if many \
                else self._backend.run(conn, q, params)
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
