"""`kill -9` of a real `gateway serve` under load loses no answered request: every response the
client received has its ledger record once a gateway starts again (issue 8, item 6)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.accounting.ledger import open_ledger
from tests.fakes.base import wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import GatewayProcess
from tests.integration.conftest import provider, simple_policy

RATE = 1000  # requests per second offered
CONCURRENCY = 32


def _ids(tmp: Path) -> set[str]:
    ledger = open_ledger(f"sqlite:///{tmp}/ledger.db", create=False)
    try:
        ledger.connect()
        rows = ledger._query("SELECT request_id FROM requests", [])  # type: ignore[attr-defined]
    except Exception:
        return set()
    finally:
        ledger.close()
    return {r[0] for r in rows}


async def _load(url: str, answered: set[str], stop_after: float, kill: Any) -> int:
    """Offer RATE req/s until the gateway is gone; `kill()` runs after `stop_after` s.
    Returns how many requests were sent."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    sent = 0
    start = time.monotonic()
    gone = asyncio.Event()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(session: aiohttp.ClientSession, stream: bool) -> None:
        try:
            async with session.post(url, json={**body, "stream": stream}) as r:
                data = await r.read()  # the whole response, as a client would have it
                if r.status == 200 and (not stream or data.rstrip().endswith(b"[DONE]")):
                    answered.add(r.headers["x-gateway-request-id"])
        except (TimeoutError, aiohttp.ClientError):
            gone.set()
        finally:
            sem.release()

    killed = False
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        tasks = set()
        while not gone.is_set() and time.monotonic() - start < stop_after + 5:
            if not killed and time.monotonic() - start >= stop_after:
                kill()
                killed = True
            await sem.acquire()
            t = asyncio.create_task(one(s, stream=sent % 3 == 0))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
            # Pace to RATE: sleep until this request's slot.
            ahead = start + sent / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    return sent


def test_kill_9_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    with FakeOpenAI("up", words=3) as up:
        # A long flush interval, and the kill half-way between its first two flushes (the
        # writer flushes 2 s after its first record, about when the load starts): the records
        # of the first 2 s are in the database, those of the last second only in the journal.
        # Killed at 2 s, on the first flush's heels, a slow machine had flushed them all.
        policy = simple_policy(tmp_path, {"up": provider(up)},
                               {"chat": {"deployments": [{"provider": "up", "model": "m"}]}})
        policy["ledger"]["flush_interval_s"] = 2.0
        policy["ledger"]["batch_size"] = 100_000
        first = GatewayProcess(policy, tmp=tmp_path).start()
        answered: set[str] = set()
        assert first.proc is not None
        pid = first.proc.pid
        sent = asyncio.run(_load(first.base_url + "/chat/completions", answered, 3.0,
                                 lambda: os.kill(pid, signal.SIGKILL)))
        first.proc.wait(10)
        assert first.proc.returncode == -signal.SIGKILL
        assert len(answered) > 200, (sent, len(answered))
        before = _ids(tmp_path)
        missing_before = answered - before
        # The database alone lost answered requests (what the journal is for)...
        assert missing_before, "the kill came too late to test anything; shorten flush"
        journal = tmp_path / "journal"
        assert list(journal.glob("journal-*.jsonl"))
        # ...and a restart ships them from the journal: nothing answered is missing.
        second = GatewayProcess(policy, tmp=tmp_path).start()
        try:
            assert wait_until(lambda: answered <= _ids(tmp_path), timeout=20), \
                f"{len(answered - _ids(tmp_path))} of {len(answered)} answered requests missing"
        finally:
            second.stop()
        assert not list(journal.glob("journal-*.jsonl"))  # shipped, then removed
        print(f"sent {sent}, answered {len(answered)}, in the database at the kill "
              f"{len(before & answered)}, recovered {len(missing_before)}")
