"""Shared by the console suites: a gateway with two tenants, a token-priced and a GPU-hour
priced deployment on loopback fakes and a SQLite ledger; traffic through it with the official
SDK; signing in to `/ui` over plain HTTP; the ledger's sums read with plain SQL (no gateway
code), to compare the pages against."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.keys import generate_key, hash_key
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway

ADMIN_KEY = "gw-admin-" + generate_key()
ACME_KEY = generate_key()
GLOBEX_KEY = generate_key()
PRICE = {"input": "1000", "output": "2000", "cache_read": "100", "reasoning": "3000"}
MIDNIGHT = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00Z")
BUCKETS = ("input_uncached", "cache_read", "cache_write", "output", "reasoning")


@dataclass
class Setup:
    gw: Gateway
    up: FakeOpenAI
    gpu: FakeOpenAI
    ledger: Path

    @property
    def url(self) -> str:
        return self.gw.url


def console_policy(tmp: Path, up: FakeOpenAI, gpu: FakeOpenAI, **console: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": f"{tmp}/spill.jsonl",
                   "flush_interval_s": 0.05},
        "router": {"circuit_breaker": {"failures": 100, "cooldown_s": 1.0}, "seed": 1,
                   "health_check_interval_s": 0.5},
        "console": console,
        "providers": {
            "up": {"kind": "openai-compatible", "base_url": up.url + "/v1",
                   "api_key": "sk-upstream-secret-123456"},
            "gpu": {"kind": "vllm", "base_url": gpu.url + "/v1", "metrics_url": gpu.url
                    + "/metrics"},
        },
        "models": {
            "chat": {"deployments": [{"provider": "up", "model": "m", "pricing": [PRICE]}]},
            # Provisioned at midnight: billed from then, so it has hours from the start.
            "small": {"deployments": [{"provider": "gpu", "model": "tiny",
                                       "gpu_cost_per_hour": "2.5", "gpu_since": MIDNIGHT}]},
        },
        "tenants": {
            "acme": {"keys": [{"id": "acme-1", "hash": hash_key(ACME_KEY), "name": "ci"}],
                     "limits": {"rpm": 600, "tpm": 100000},
                     "budget": {"monthly_usd": "5", "alerts": [0.5, 0.9]}},
            "globex": {"keys": [{"id": "globex-1", "hash": hash_key(GLOBEX_KEY)}]},
        },
    }


@pytest.fixture
def console_setup(tmp_path: Path) -> Iterator[Setup]:
    up = FakeOpenAI("up", cached_tokens=3, reasoning_tokens=2).start()
    gpu = FakeOpenAI("gpu", vllm=True).start()
    gpu.waiting, gpu.running, gpu.kv_usage = 3, 2, 0.42
    gw = Gateway(console_policy(tmp_path, up, gpu), tmp=tmp_path).start()
    try:
        yield Setup(gw, up, gpu, tmp_path / "ledger.db")
    finally:
        gw.stop()
        up.stop()
        gpu.stop()


def traffic(setup: Setup) -> None:
    """acme: 3 chat + 2 streamed small; globex: 2 chat; all waited for in the ledger."""
    msg: Any = [{"role": "user", "content": "hi"}]
    acme = openai.OpenAI(base_url=setup.gw.base_url, api_key=ACME_KEY, max_retries=0)
    globex = openai.OpenAI(base_url=setup.gw.base_url, api_key=GLOBEX_KEY, max_retries=0)
    for i in range(3):
        acme.chat.completions.create(model="chat", messages=msg, max_tokens=5,
                                     extra_headers={"x-request-id": f"acme-chat-{i}"})
    for _ in range(2):
        for _chunk in acme.chat.completions.create(model="small", messages=msg, max_tokens=5,
                                                   stream=True):
            pass
    for _ in range(2):
        globex.chat.completions.create(model="chat", messages=msg, max_tokens=5)
    wait_for_requests(setup.ledger, 7)


def _rows(db: Path, q: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(q, params).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


def wait_for_requests(db: Path, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(db, "SELECT COUNT(*) FROM requests")
        if rows and rows[0][0] >= n:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the ledger has {rows} requests, expected {n}")
        time.sleep(0.05)


def ledger_sums(db: Path, tenant: str | None = None) -> dict[str, Any]:
    """Requests, token cost and tokens per bucket straight from the requests/attempts tables."""
    where, params = ("WHERE r.tenant = ?", (tenant,)) if tenant else ("", ())
    n = _rows(db, f"SELECT COUNT(*) FROM requests r {where}", params)[0][0]
    costs = _rows(db, f"SELECT cost_usd FROM requests r {where}", params)
    sums = ", ".join(f"COALESCE(SUM(a.{b}), 0)" for b in BUCKETS)
    tokens = _rows(db, f"SELECT {sums} FROM attempts a JOIN requests r USING (request_id) "
                       f"{where}", params)[0]
    return {"requests": n, "cost_usd": sum((Decimal(c) for (c,) in costs), Decimal(0)),
            **dict(zip(BUCKETS, tokens, strict=True))}


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def sign_in(url: str, key: str) -> httpx.Client:
    """A client holding a console session for `key` (the sign-in form, as a browser posts it)."""
    c = httpx.Client(base_url=url, follow_redirects=False, timeout=30.0)
    form = c.get("/ui/login")
    r = c.post("/ui/login", data={"key": key, "csrf": csrf_of(form.text)})
    assert r.status_code == 303, r.text
    return c
