"""Shared by the tenancy and accounting end-to-end suites: a fresh Redis prefix and PostgreSQL
schema per test, policies with tenants and keys, reading the ledger straight from PostgreSQL,
and running the `gateway` CLI as a subprocess.

Everything here talks to the real services (Redis at 127.0.0.1:6379, PostgreSQL at
127.0.0.1:5432/test); a test that cannot reach them is skipped, never faked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import redis
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from psycopg import sql
from psycopg.rows import dict_row

from gateway.accounting.ledger_rows import BUCKETS
from gateway.keys import generate_key, hash_key
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import ROOT

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "gw-admin-" + uuid.uuid4().hex
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
MILLION = Decimal(1_000_000)


# ---- services --------------------------------------------------------------------------------

def _redis_or_skip(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as e:  # pragma: no cover - environment without Redis
        client.close()
        pytest.skip(f"Redis not reachable at {url}: {e}")
    return client


def _pg_or_skip() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:  # pragma: no cover - environment without PostgreSQL
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")


def fresh_prefix(url: str = REDIS_URL) -> Iterator[str]:
    """A Redis key prefix of its own; its keys are deleted afterwards."""
    client = _redis_or_skip(url)
    prefix = f"gwtest:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def fresh_schema() -> Iterator[str]:
    """A PostgreSQL schema of its own (the gateway creates its tables there), dropped after."""
    conn = _pg_or_skip()
    name = f"gwtest_{uuid.uuid4().hex[:12]}"
    yield name
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    conn.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    yield from fresh_prefix()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    yield from fresh_schema()


# ---- keys and policies -----------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyKey:
    """A key declared in the policy (as its hash), with the plaintext the test sends."""

    id: str
    key: str
    name: str | None = None

    def entry(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "hash": hash_key(self.key), **extra}
        if self.name:
            out["name"] = self.name
        return out


def policy_key(key_id: str, name: str | None = None) -> PolicyKey:
    return PolicyKey(key_id, generate_key(), name)


def fake_provider(fake: FakeOpenAI, kind: str = "openai-compatible", **extra: Any
                  ) -> dict[str, Any]:
    return {"kind": kind, "base_url": fake.url + "/v1", **extra}


def tenant_policy(tmp: Path, schema: str, prefix: str, providers: dict[str, Any],
                  models: dict[str, Any], tenants: dict[str, Any], *,
                  ledger_url: str = PG_URL, spill: str = "spill.jsonl",
                  **sections: Any) -> dict[str, Any]:
    """A policy with tenants, the ledger (and key store) in `schema`, limits in Redis under
    `prefix`, and the admin API on `ADMIN_KEY`."""
    return {
        "server": {"admin_key": ADMIN_KEY},
        "state": {"redis_url": REDIS_URL, "key_prefix": prefix},
        "ledger": {"url": ledger_url, "schema": schema, "spill_path": str(tmp / spill),
                   "flush_interval_s": 0.05},
        "router": {"circuit_breaker": {"failures": 100, "cooldown_s": 1.0}, "seed": 1,
                   **sections.pop("router", {})},
        "providers": providers,
        "models": models,
        "tenants": tenants,
        **sections,
    }


def write_policy(tmp: Path, policy: dict[str, Any], name: str = "policy.yaml") -> Path:
    import yaml

    path = tmp / name
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


# ---- clients ---------------------------------------------------------------------------------

def sdk(base_url: str, key: str, **kw: Any) -> openai.OpenAI:
    """The official SDK as an application uses it; no retries unless a test asks for them."""
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30.0)
    return openai.OpenAI(base_url=base_url, api_key=key, **kw)


def message(e: openai.APIStatusError) -> str:
    """The `error.message` the gateway sent (the SDK's own `message` adds a prefix)."""
    body = e.body
    return str(body.get("message")) if isinstance(body, dict) else str(body)


def started(fake: FakeOpenAI) -> FakeOpenAI:
    fake.start()
    return fake


def admin(method: str, url: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **kw.pop("headers", {})}
    return httpx.request(method, url + path, headers=headers, timeout=30.0, **kw)


def poll(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
         what: str = "condition") -> Any:
    """The first truthy value of `cond()` within `timeout` seconds, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


def run_cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS --config POLICY` in its own process, as an admin runs it."""
    cmd = [sys.executable, "-m", "gateway", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# ---- fakes -----------------------------------------------------------------------------------

class StampedFake(FakeOpenAI):
    """The fake OpenAI server, also noting when each request arrived (monotonic clock)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.arrivals: list[float] = []

    async def record(self, request: web.Request) -> Any:
        self.arrivals.append(time.monotonic())
        return await super().record(request)


@pytest.fixture
def up() -> Iterator[StampedFake]:
    """The one upstream of the single-gateway suites."""
    fake = StampedFake("up")
    fake.start()
    yield fake
    fake.stop()


# ---- the ledger, read straight from PostgreSQL -----------------------------------------------

class LedgerDB:
    """Reads the gateway's ledger tables in one schema with plain SQL (no gateway code)."""

    def __init__(self, schema: str, url: str = PG_URL) -> None:
        self.schema = schema
        self.url = url

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            try:
                return conn.execute(query, params).fetchall()  # type: ignore[arg-type]
            except psycopg.errors.UndefinedTable:
                return []  # the writer has not created its tables yet

    def request(self, request_id: str) -> dict[str, Any] | None:
        """The row of the request the client sent with `x-request-id: request_id` (the ledger's
        own key is the gateway's; the client's id is kept beside it)."""
        rows = self._query("SELECT * FROM requests WHERE client_request_id = %s",
                           (request_id,))
        return rows[0] if rows else None

    def attempts(self, request_id: str) -> list[dict[str, Any]]:
        return self._query("SELECT a.* FROM attempts a JOIN requests r USING (request_id) "
                           "WHERE r.client_request_id = %s ORDER BY a.idx", (request_id,))

    def wait_request(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        row: dict[str, Any] = poll(lambda: self.request(request_id), timeout,
                                   what=f"ledger record {request_id}")
        return row

    def count(self, tenant: str | None = None) -> int:
        if tenant is None:
            rows = self._query("SELECT COUNT(*) AS n FROM requests")
        else:
            rows = self._query("SELECT COUNT(*) AS n FROM requests WHERE tenant = %s", (tenant,))
        return int(rows[0]["n"]) if rows else 0

    def totals(self, tenant: str | None = None) -> dict[str, Any]:
        """Requests, attempts, tokens per bucket and cost over the base tables."""
        where, params = ("WHERE r.tenant = %s", (tenant,)) if tenant else ("", ())
        req = self._query(f"SELECT COUNT(*) AS n, COALESCE(SUM(cost_usd), 0) AS cost "
                          f"FROM requests r {where}", params)
        sums = ", ".join(f"COALESCE(SUM(a.{b}), 0) AS {b}" for b in BUCKETS)
        att = self._query(f"SELECT COUNT(*) AS attempts, COALESCE(SUM(a.cost_usd), 0) AS cost, "
                          f"{sums} FROM attempts a JOIN requests r USING (request_id) {where}",
                          params)
        if not req:
            return {"requests": 0, "attempts": 0, "cost_usd": Decimal(0),
                    "attempt_cost_usd": Decimal(0), **dict.fromkeys(BUCKETS, 0)}
        return {"requests": int(req[0]["n"]), "cost_usd": Decimal(req[0]["cost"]),
                "attempts": int(att[0]["attempts"]),
                "attempt_cost_usd": Decimal(att[0]["cost"]),
                **{b: int(att[0][b]) for b in BUCKETS}}


def price(tokens: dict[str, int], rates: dict[str, str]) -> Decimal:
    """Σ tokens × USD-per-million, exactly, with the policy's bucket defaults."""
    r = {k: Decimal(v) for k, v in rates.items()}
    r.setdefault("cache_read", r.get("input", Decimal(0)))
    r.setdefault("cache_write", r.get("input", Decimal(0)))
    r.setdefault("reasoning", r.get("output", Decimal(0)))
    total = sum((Decimal(tokens.get(b, 0)) * r.get("input" if b == "input_uncached" else b,
                                                    Decimal(0)) for b in BUCKETS), Decimal(0))
    return total / MILLION
