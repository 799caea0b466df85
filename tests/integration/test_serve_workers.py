"""`gateway serve --workers 2`: two processes on one port, one Redis for the limits, one SQLite
ledger written by both. Every answered request is in the ledger exactly once — also when one
worker is killed with `kill -9` while its records are still only in its journal — a
tenant's requests per minute hold across both workers, and without Redis `serve` refuses."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.policy.load import load_policy
from gateway.workers import refusal
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import GatewayProcess, policy_text
from tests.integration.conftest import provider, simple_policy
from tests.integration.tenancy_support import (
    REDIS_URL,
    fresh_prefix,
    policy_key,
    poll,
    started,
)

KEY = policy_key("workers-key")
LIMITED = policy_key("limited-key")
RPM = 12


def _policy(tmp: Path, fake: FakeOpenAI, prefix: str | None) -> dict[str, Any]:
    policy = simple_policy(tmp, {"up": provider(fake)},
                           {"chat": {"deployments": [{"provider": "up", "model": "m"}]}},
                           tenants={"t": {"keys": [KEY.entry()]},
                                    "lim": {"keys": [LIMITED.entry()],
                                            "limits": {"rpm": RPM}}})
    # Records wait in the writer's queue for 30 s: a worker killed now has them only in its
    # journal, and the ledger can get them only through the recovery of that journal.
    policy["ledger"]["flush_interval_s"] = 30
    if prefix is not None:
        policy["state"] = {"redis_url": REDIS_URL, "key_prefix": prefix}
    return policy


def _workers(supervisor: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing's spawned interpreters)."""
    out = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        if ppid == supervisor and b"spawn_main" in cmd:
            out.add(int(entry.name))
    return out


def _ledger_ids(tmp: Path) -> list[str]:
    conn = sqlite3.connect(tmp / "ledger.db")
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM requests")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


async def _send(url: str, key: str, n: int, concurrency: int = 8) -> list[tuple[int, str]]:
    """`n` requests, each on a new connection (so the kernel spreads them over the workers):
    (status, the gateway's request id)."""
    sem = asyncio.Semaphore(concurrency)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}

    async def one() -> tuple[int, str]:
        async with sem, aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=20),
                connector=aiohttp.TCPConnector(force_close=True)) as s, \
                s.post(url + "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {key}"}) as r:
            await r.read()
            return r.status, r.headers.get("x-gateway-request-id", "")

    return await asyncio.gather(*(one() for _ in range(n)))


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from fresh_prefix()


def test_two_workers_serve_one_port_and_every_request_is_in_the_ledger_once(
        prefix: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gw-workers-"))
    fake = started(FakeOpenAI("up"))
    gw = GatewayProcess(_policy(tmp, fake, prefix), tmp=tmp, args=("--workers", "2"))
    gw.start(timeout=60)
    try:
        assert gw.proc is not None
        poll(lambda: len(_workers(gw.proc.pid)) == 2, timeout=30)
        first = set(_workers(gw.proc.pid))

        # Both workers serve: segments are named by the process that wrote them. A worker that
        # is alive may still be importing when the first one answers `/health`, and until it
        # accepts, the kernel gives every connection to the other: send until both have
        # journaled (bounded), and count every request sent.
        answered: set[str] = set()
        sent = 0
        deadline = time.monotonic() + 30
        while True:
            results = asyncio.run(_send(gw.url, KEY.key, 40))
            assert [s for s, _ in results] == [200] * 40
            answered |= {rid for _, rid in results}
            sent += 40
            writers = {p.name.split("-")[1]
                       for p in (tmp / "journal").glob("journal-*.jsonl")}
            if writers >= {str(p) for p in first} or time.monotonic() > deadline:
                break
        assert len(answered) == sent
        assert writers >= {str(p) for p in first}

        # kill -9 one worker: the supervisor starts another, which ships the dead one's journal.
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        poll(lambda: len(_workers(gw.proc.pid)) == 2 and victim not in _workers(gw.proc.pid),
             timeout=30)
        poll(lambda: answered <= set(_ledger_ids(tmp)), timeout=30)

        more = asyncio.run(_send(gw.url, KEY.key, 40))
        assert [s for s, _ in more] == [200] * 40
        answered |= {rid for _, rid in more}
    finally:
        gw.stop()  # SIGTERM: each worker drains and flushes its writer
        fake.stop()
    ids = _ledger_ids(tmp)
    assert len(ids) == len(set(ids))  # no record twice
    assert answered <= set(ids)
    assert len(ids) == len(answered)  # and nothing the client was not answered for


def test_a_tenants_requests_per_minute_hold_across_workers(prefix: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gw-workers-rpm-"))
    fake = started(FakeOpenAI("up"))
    gw = GatewayProcess(_policy(tmp, fake, prefix), tmp=tmp, args=("--workers", "2"))
    gw.start(timeout=60)
    try:
        t0 = time.monotonic()
        results = asyncio.run(_send(gw.url, LIMITED.key, 2 * RPM, concurrency=4))
        elapsed = time.monotonic() - t0
    finally:
        gw.stop()
        fake.stop()
    statuses = sorted(s for s, _ in results)
    # One bucket of RPM in Redis, not one per worker (which would admit all 2 × RPM); each
    # token refilled during the run (one per 60/RPM s) may admit one more.
    refilled = math.ceil(elapsed / (60 / RPM))
    assert refilled < RPM, f"{elapsed:.1f} s for {2 * RPM} requests: too slow to tell"
    assert RPM <= statuses.count(200) <= RPM + refilled, (statuses, elapsed)
    assert 429 in statuses


def test_workers_without_redis_are_refused_with_the_way_out() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gw-workers-refused-"))
    path = tmp / "policy.yaml"
    path.write_text(policy_text(_policy(tmp, FakeOpenAI("up"), None)))
    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path),
                          "--port", "0", "--workers", "2"], capture_output=True, text=True,
                         timeout=60, cwd=tmp, check=False)
    assert out.returncode == 2
    assert "--workers 2 needs shared state" in out.stderr
    assert "state.redis_url" in out.stderr
    assert refusal(1, load_policy(str(path))) is None
