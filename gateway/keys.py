"""API keys issued at run time: stored as hashes in the ledger's database (SQLite or PostgreSQL).

A key is `gw-` + 43 url-safe random characters (256 bits). Only `sha256:<hex>` of it is
stored, with its id, tenant, name, a masked hint (`gw-ab***yz`, so people can tell keys apart)
and its created/expires/revoked times. The plaintext is returned once, by `create`.

Every change bumps one counter row (`gateway_key_revision`) in the same transaction, and the
changed row takes the new value. Replicas poll `changes_since(revision)`: one single-row read
when nothing changed. Writers serialise on that row, so revisions commit in order and a
reader that has seen revision N has seen every change up to N.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable

KEY_PREFIX = "gw-"
_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def hash_key(key: str) -> str:
    """`sha256:<hex>` of a key: what the policy and the database hold (`gateway keys hash`)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def mask_key(key: str) -> str:
    """`gw-ab***yz`: enough to recognise a key in a message, never enough to use it."""
    return f"{key[:5]}***{key[-2:]}" if len(key) >= 12 else "***"


class KeyRecord(NamedTuple):
    """One key, as the store holds it. A named tuple, not a frozen dataclass: the store makes
    one per key (100,000 at a start-up with 100,000 run-time keys), and a frozen dataclass's
    `__init__`, one `object.__setattr__` per field, costs five times as much to run (0.12 s
    against 0.02 s for 100,000). Immutable all the same; `_replace` makes a changed copy."""

    id: str
    tenant: str
    name: str | None
    # The masked key (`gw-ab***yz`); None for keys declared in the policy.
    hint: str | None
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    # Where the key lives: issued into the database, or declared in the policy file.
    source: Literal["store", "policy"] = "store"
    revision: int = 0
    # `sha256:<hex>`; never shown by `public()`.
    hash: str = ""

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, Any]:
        """The JSON shape for `GET /admin/keys` and `gateway keys list`."""
        def iso(t: datetime | None) -> str | None:
            return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None
        return {"id": self.id, "tenant": self.tenant, "name": self.name, "hint": self.hint,
                "source": self.source, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at), "revoked_at": iso(self.revoked_at)}


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    """The plaintext; shown once, never stored."""
    record: KeyRecord


class KeyStore(Protocol):
    async def create(self, tenant: str, name: str | None = None,
                     expires: datetime | None = None) -> IssuedKey: ...

    async def list(self, tenant: str | None = None) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke (idempotent). Raises NotFound for an unknown id."""
        ...

    async def changes_since(self, revision: int) -> tuple[int, builtins.list[KeyRecord]]:
        """(current revision, keys changed after `revision`); everything for revision 0."""
        ...

    async def close(self) -> None: ...


def open_key_store(url: str, *, schema: str | None = None) -> KeyStore:
    """The store for `policy.ledger.url` (`sqlite:///path` or `postgresql://…`)."""
    if url.startswith("sqlite:///"):
        return SqliteKeyStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresKeyStore(url, schema=schema)
    raise InvalidRequest(f"unsupported key database URL {url.split('://')[0]}://…; use "
                         "sqlite:///path or postgresql://user@host:port/db")


_COLS = "id, tenant, name, hint, created_at, expires_at, revoked_at, revision, hash"


def _new_record(tenant: str, name: str | None, expires: datetime | None) -> IssuedKey:
    if expires is not None and expires.tzinfo is None:
        raise InvalidRequest("expires must be timezone-aware (UTC)")
    key = generate_key()
    now = datetime.now(UTC).replace(microsecond=0)
    record = KeyRecord("key_" + secrets.token_hex(8), tenant, name, mask_key(key), now, expires,
                       None, hash=hash_key(key))
    return IssuedKey(key, record)


def _not_found(key_id: str) -> NotFound:
    return NotFound(f'No API key with id "{key_id}". List them with `gateway keys list`.')


# -- SQLite ----------------------------------------------------------------------------------

def _sqlite_records(rows: Iterable[Any]) -> list[KeyRecord]:
    """Rows of `_COLS` as records: the one way the SQLite store makes them (100,000 in
    0.04-0.07 s at a start-up, after SQLite's 0.12 s to read them). One string per distinct
    tenant name (100,000 keys name a few thousand tenants), shared through a dict of this
    batch's names: 0.015 s less than `sys.intern` for 100,000, whose table is the process's."""
    names: dict[str, str] = {}
    make, share, ts = KeyRecord._make, names.setdefault, datetime.fromisoformat
    return [make((i, share(t, t), n, h, ts(c) if c else None, ts(e) if e else None,
                  ts(r) if r else None, "store", rev, hs))
             for i, t, n, h, c, e, r, rev, hs in rows]


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat() if t else None


class SqliteKeyStore:
    """One connection, used from a worker thread under a lock (sqlite3 blocks)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript("""
                CREATE TABLE IF NOT EXISTS gateway_keys (
                    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
                    name TEXT, hint TEXT, created_at TEXT NOT NULL, expires_at TEXT,
                    revoked_at TEXT, revision INTEGER NOT NULL);
                CREATE INDEX IF NOT EXISTS gateway_keys_revision ON gateway_keys (revision);
                CREATE TABLE IF NOT EXISTS gateway_key_revision (
                    id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
                INSERT OR IGNORE INTO gateway_key_revision VALUES (1, 0);
            """)
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self._lock:
            try:
                return await asyncio.to_thread(lambda: fn(self._connect()))
            except sqlite3.Error as e:
                raise ServiceUnavailable(f"The key database cannot be used: {e}") from e

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> int:
        row = conn.execute("UPDATE gateway_key_revision SET value = value + 1 WHERE id = 1 "
                           "RETURNING value").fetchone()
        return int(row[0])

    async def create(self, tenant: str, name: str | None = None,
                     expires: datetime | None = None) -> IssuedKey:
        issued = _new_record(tenant, name, expires)
        r = issued.record

        def insert(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading the counter
            try:
                rev = self._bump(conn)
                conn.execute(f"INSERT INTO gateway_keys ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                             (r.id, r.tenant, r.name, r.hint, _iso(r.created_at),
                              _iso(r.expires_at), None, rev, r.hash))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return rev

        rev = await self._run(insert)
        return IssuedKey(issued.key, _with_revision(r, rev))

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        def select(conn: sqlite3.Connection) -> list[KeyRecord]:
            q = f"SELECT {_COLS} FROM gateway_keys"
            rows = (conn.execute(q + " WHERE tenant = ? ORDER BY created_at", (tenant,))
                    if tenant is not None else conn.execute(q + " ORDER BY created_at"))
            return _sqlite_records(rows)
        result: list[KeyRecord] = await self._run(select)
        return result

    async def revoke(self, key_id: str) -> KeyRecord:
        def update(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(f"SELECT {_COLS} FROM gateway_keys WHERE id = ?",
                                   (key_id,)).fetchone()
                if row is not None and row[6] is None:
                    rev = self._bump(conn)
                    row = conn.execute(
                        "UPDATE gateway_keys SET revoked_at = ?, revision = ? WHERE id = ? "
                        f"RETURNING {_COLS}", (_iso(datetime.now(UTC)), rev, key_id)).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return tuple(row) if row is not None else None

        row = await self._run(update)
        if row is None:
            raise _not_found(key_id)
        return _sqlite_records([row])[0]

    async def changes_since(self, revision: int) -> tuple[int, builtins.list[KeyRecord]]:
        # Here, not at the top: `gateway keys hash` imports this module, not the policy's.
        from gateway.policy.load import paused_cycle_collection

        def select(conn: sqlite3.Connection) -> tuple[int, builtins.list[KeyRecord]]:
            current = int(conn.execute(
                "SELECT value FROM gateway_key_revision WHERE id = 1").fetchone()[0])
            if current == revision:
                return current, []
            with paused_cycle_collection():  # 100,000 keys at start-up: 0.15 s of collection
                rows = _sqlite_records(conn.execute(
                    f"SELECT {_COLS} FROM gateway_keys WHERE revision > ? ORDER BY revision",
                    (revision,)))
            # In revision order: the last is the newest.
            return max(current, rows[-1].revision if rows else 0), rows
        result: tuple[int, builtins.list[KeyRecord]] = await self._run(select)
        return result

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _with_revision(r: KeyRecord, rev: int) -> KeyRecord:
    return r._replace(revision=rev)


# -- PostgreSQL ------------------------------------------------------------------------------

class PostgresKeyStore:
    """One autocommit connection (admin calls and one poll a second are all it serves),
    reopened after a failure."""

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        if schema is not None and not _SCHEMA.fullmatch(schema):
            raise InvalidRequest(f"invalid schema name {schema!r}: letters, digits, underscore")
        self._url = url
        self._q = f'"{schema}".' if schema else ""
        self._schema = schema
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        import psycopg  # imported here: SQLite deployments never load it

        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                         connect_timeout=5)
            q = self._q
            async with conn.transaction():
                # Replicas starting together must not race on CREATE TABLE.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway_keys'))")
                if self._schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                await conn.execute(f"""
                    CREATE TABLE IF NOT EXISTS {q}gateway_keys (
                        id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
                        name TEXT, hint TEXT, created_at TIMESTAMPTZ NOT NULL,
                        expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ,
                        revision BIGINT NOT NULL)""")
                await conn.execute(f"CREATE INDEX IF NOT EXISTS gateway_keys_revision "
                                   f"ON {q}gateway_keys (revision)")
                await conn.execute(f"""
                    CREATE TABLE IF NOT EXISTS {q}gateway_key_revision (
                        id INT PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL)""")
                await conn.execute(f"INSERT INTO {q}gateway_key_revision VALUES (1, 0) "
                                   "ON CONFLICT DO NOTHING")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        import psycopg

        async with self._lock:
            try:
                return await fn(await self._connect())
            except psycopg.Error as e:
                # Drop the connection: the next call reconnects rather than reusing a bad one.
                if self._conn is not None:
                    await self._conn.close()
                self._conn = None
                raise ServiceUnavailable(f"The key database cannot be used: {e}") from e

    async def _bump(self, conn: Any) -> int:
        cur = await conn.execute(f"UPDATE {self._q}gateway_key_revision SET value = value + 1 "
                                 "WHERE id = 1 RETURNING value")
        return int((await cur.fetchone())[0])

    async def create(self, tenant: str, name: str | None = None,
                     expires: datetime | None = None) -> IssuedKey:
        issued = _new_record(tenant, name, expires)
        r = issued.record

        async def insert(conn: Any) -> int:
            async with conn.transaction():
                rev = await self._bump(conn)
                await conn.execute(
                    f"INSERT INTO {self._q}gateway_keys ({_COLS}) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    (r.id, r.tenant, r.name, r.hint, r.created_at, r.expires_at, None, rev,
                     r.hash))
            return rev

        return IssuedKey(issued.key, _with_revision(r, await self._run(insert)))

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        async def select(conn: Any) -> list[KeyRecord]:
            q = f"SELECT {_COLS} FROM {self._q}gateway_keys"
            cur = await (conn.execute(q + " WHERE tenant = %s ORDER BY created_at", (tenant,))
                         if tenant is not None else conn.execute(q + " ORDER BY created_at"))
            return _pg_records(await cur.fetchall())
        result: list[KeyRecord] = await self._run(select)
        return result

    async def revoke(self, key_id: str) -> KeyRecord:
        async def update(conn: Any) -> Any:
            async with conn.transaction():
                cur = await conn.execute(
                    f"SELECT {_COLS} FROM {self._q}gateway_keys WHERE id = %s FOR UPDATE",
                    (key_id,))
                row = await cur.fetchone()
                if row is not None and row[6] is None:
                    rev = await self._bump(conn)
                    cur = await conn.execute(
                        f"UPDATE {self._q}gateway_keys SET revoked_at = now(), revision = %s "
                        f"WHERE id = %s RETURNING {_COLS}", (rev, key_id))
                    row = await cur.fetchone()
            return row

        row = await self._run(update)
        if row is None:
            raise _not_found(key_id)
        return _pg_records([row])[0]

    async def changes_since(self, revision: int) -> tuple[int, builtins.list[KeyRecord]]:
        from gateway.policy.load import paused_cycle_collection

        async def select(conn: Any) -> tuple[int, builtins.list[KeyRecord]]:
            cur = await conn.execute(
                f"SELECT value FROM {self._q}gateway_key_revision WHERE id = 1")
            current = int((await cur.fetchone())[0])
            if current == revision:
                return current, []
            cur = await conn.execute(f"SELECT {_COLS} FROM {self._q}gateway_keys "
                                     "WHERE revision > %s ORDER BY revision", (revision,))
            fetched = await cur.fetchall()
            with paused_cycle_collection():
                rows = _pg_records(fetched)
            # In revision order: the last is the newest.
            return max(current, rows[-1].revision if rows else 0), rows
        result: tuple[int, builtins.list[KeyRecord]] = await self._run(select)
        return result

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def _pg_records(rows: Iterable[Any]) -> list[KeyRecord]:
    """Rows of `_COLS` (timestamps already `datetime`s) as records, as `_sqlite_records`."""
    names: dict[str, str] = {}
    make, share = KeyRecord._make, names.setdefault
    return [make((i, share(t, t), n, h, c, e, r, "store", int(rev), hs))
            for i, t, n, h, c, e, r, rev, hs in rows]
