"""Shared by the accounting tests: record factories, a fresh PostgreSQL schema per test, and a
TCP proxy that can cut the database off and bring it back."""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.ledger_sqlite import path_of
from gateway.accounting.pricing import PriceBook, Rates
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage

PG_URL = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DEAD_PG_URL = "postgresql://postgres@127.0.0.1:1/test"
START = datetime(2026, 1, 30, tzinfo=UTC)

DEPLOYMENTS = [("oa/gpt-4o", "oa"), ("az/gpt-4o", "az"), ("gpu/llama", "gpu")]


def book() -> PriceBook:
    r = lambda i, o, since=None: Rates(  # noqa: E731
        Decimal(i), Decimal(i) / 2, Decimal(i) * Decimal("1.25"), Decimal(o), Decimal(o), since)
    return PriceBook.from_rates(
        {"oa/gpt-4o": [r("2.5", "10"), r("2", "8", datetime(2026, 2, 1, tzinfo=UTC))],
         "az/gpt-4o": [r("2.75", "11")]},
        {("beta", "oa/gpt-4o"): [r("0.1", "0.3")]},
        {"gpu/llama": Decimal("3.5")},
    )


def make_records(n: int, seed: int = 1, prefix: str = "req",
                 price_book: PriceBook | None = None) -> list[RequestRecord]:
    """Varied records over a few days: fallbacks, refusals with no attempt, missing usage."""
    rng = random.Random(seed)
    pb = price_book or book()
    out = []
    for i in range(n):
        ts = START + timedelta(minutes=rng.randint(0, 4 * 24 * 60), microseconds=i)
        tenant = rng.choice(["acme", "beta", "gamma"])
        rec = RequestRecord(
            request_id=f"{prefix}-{seed}-{i}", ts=ts, tenant=tenant, key_id=f"k-{tenant}",
            model=rng.choice(["gpt", "llama"]), endpoint="chat", stream=rng.random() < 0.5,
            status=200, latency_ms=rng.random() * 900, ttft_ms=rng.choice([None, 12.5]),
        )
        kind = rng.random()
        if kind < 0.05:
            rec.status, rec.error_code = 429, "rate_limited"  # refused: no attempt at all
        else:
            tries = 1 if kind < 0.8 else rng.randint(2, 3)
            for t in range(tries):
                dep, prov = rng.choice(DEPLOYMENTS)
                last = t == tries - 1
                usage = None
                if last or rng.random() < 0.3:
                    usage = Usage(rng.randint(0, 5000), rng.randint(0, 2000), rng.randint(0, 300),
                                  rng.randint(0, 3000), rng.randint(0, 500),
                                  source=rng.choice(["provider", "estimated"]))
                rec.attempts.append(AttemptRecord(
                    dep, prov, dep.split("/")[1], "ok" if last else "error",
                    200 if last else 503, usage, rng.random() * 100,
                    error=None if last else "upstream 503"))
            if rng.random() < 0.05:
                rec.status = 502
        out.append(pb.price_record(rec))
    return out


def raw_sums(target: tuple[str, str | None]) -> dict[str, Any]:
    """Totals straight from the requests/attempts tables with plain SQL (no rollups)."""
    url, schema = target
    q_req = "SELECT COUNT(*), cost_usd FROM requests GROUP BY cost_usd"
    q_att = f"SELECT {', '.join(f'SUM({b})' for b in BUCKETS)}, COUNT(*) FROM attempts"
    att_cost: Any
    if url.startswith("sqlite"):
        with sqlite3.connect(path_of(url)) as c:
            rows = c.execute(q_req).fetchall()
            att = c.execute(q_att).fetchone()
            att_cost = sum((Decimal(x) for (x,) in c.execute("SELECT cost_usd FROM attempts")),
                           Decimal(0))
    else:
        with psycopg.connect(url) as c:
            c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema or "")))
            rows = c.execute(q_req).fetchall()
            att = c.execute(q_att).fetchone()
            one = c.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM attempts").fetchone()
            att_cost = one[0] if one else 0
    assert att is not None
    return {
        "requests": sum(n for n, _ in rows),
        "request_cost": sum((n * Decimal(str(cost)) for n, cost in rows), Decimal(0)),
        "attempts": att[len(BUCKETS)],
        "attempt_cost": Decimal(str(att_cost)),
        **{b: int(att[i] or 0) for i, b in enumerate(BUCKETS)},
    }


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    if not pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    name = f"acct_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str | None]:
    """(url, schema) of an empty ledger, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db", None
    schema: str = request.getfixturevalue("pg_schema")
    return PG_URL, schema


class TcpProxy:
    """Forwards a local port to PostgreSQL; ``down()`` cuts every connection and refuses new
    ones, ``up()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> TcpProxy:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would not,
                # and the port would keep accepting.
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._socks.clear()

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
