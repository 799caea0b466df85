"""The shared routing view through a real Redis: two replicas' collectors see each other's
in-flight counts and prefix records, a replica that stops exchanging drops out of the view,
and a Redis that dies degrades each replica to its own view without raising, then resumes.

Redis here is a private `redis-server` started on a free port and killed by the test (the
shared one on 6379 must not be killed); exchanges are driven by hand, not by the background
task, and the staleness clock is a fake one, so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.routing.prefix_index import fingerprints
from gateway.routing.shared_view import SharedView, redis_client
from gateway.routing.signals import SignalCollector
from tests.fakes.base import free_port, wait_until

DOC = {"messages": [{"role": "system", "content": "Firmware manual of the X200. " * 200},
                    {"role": "user", "content": "how do I reset it?"}]}


class PrivateRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        exe = shutil.which("redis-server")
        if exe is None:  # pragma: no cover - environment without Redis
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        assert wait_until(up, timeout=10), "private redis-server did not start"
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path).start()
    yield r
    r.kill()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(url: str, prefix: str, name: str, clock: Clock,
            stale_s: float = 2.0) -> tuple[SignalCollector, SharedView]:
    collector = SignalCollector(clock=clock)
    view = collector.view = SharedView(collector, redis_client(url), key_prefix=prefix,
                                       replica=name, stale_s=stale_s, clock=clock)
    return collector, view


async def poll(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait (with a deadline) until `cond()` (or the coroutine it returns) is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met within the deadline")


def pair(url: str, stale_s: float = 2.0) -> tuple[Clock, SignalCollector, SharedView,
                                                  SignalCollector, SharedView]:
    """Replicas `a` and `b` on one fresh key prefix, with one fake clock."""
    clock = Clock()
    prefix = f"t:{uuid.uuid4().hex}:"
    a, va = replica(url, prefix, "a", clock, stale_s)
    b, vb = replica(url, prefix, "b", clock, stale_s)
    return clock, a, va, b, vb


def test_replicas_see_each_others_load_and_prefixes(private_redis: PrivateRedis) -> None:
    async def main() -> None:
        _, a, va, b, vb = pair(private_redis.url)
        a.begin("gpu-1")
        a.begin("gpu-1")
        a.begin("gpu-2")
        b.begin("gpu-2")
        p = fingerprints(DOC)
        a.prefixes.record("gpu-1", p.fps, p.tokens)
        assert await va.exchange() and await vb.exchange() and await va.exchange()
        # b counts a's requests ahead on top of its own, and a counts b's.
        sb = b.snapshot()
        assert sb.load("gpu-1").in_flight == 2 and sb.load("gpu-2").in_flight == 2
        assert a.snapshot().load("gpu-2").in_flight == 2
        # a's prefix record is in b's index (and a's own is not re-recorded from the stream).
        assert sb.prefixes is b.prefixes
        assert b.prefixes.matched(p.fps, p.tokens, {"gpu-1", "gpu-2"}) == {
            "gpu-1": sum(p.tokens)}
        assert vb.replicas == 2
        # Requests end on a: b sees it at its next exchange after a's.
        a.end("gpu-1", ok=True)
        a.end("gpu-1", ok=True)
        assert await va.exchange() and await vb.exchange()
        assert b.snapshot().load("gpu-1").in_flight == 0
        await va.stop()
        await vb.stop()

    asyncio.run(main())


def test_a_replica_that_stops_exchanging_drops_out(private_redis: PrivateRedis) -> None:
    async def main() -> None:
        _, a, va, b, vb = pair(private_redis.url, 0.2)
        a.begin("gpu-1")
        assert await va.exchange() and await vb.exchange()
        assert b.snapshot().load("gpu-1").in_flight == 1
        # a dies (no more exchanges). Its heartbeat is by Redis's clock: poll, no sleep.

        async def exchanged_and_gone() -> bool:
            assert await vb.exchange()
            return b.snapshot().load("gpu-1").in_flight == 0

        await poll(exchanged_and_gone)
        assert b.snapshot().load("gpu-1").in_flight == 0 and vb.replicas == 1
        await va.stop()
        await vb.stop()

    asyncio.run(main())


def test_redis_dying_degrades_to_the_local_view_and_sharing_resumes(
        private_redis: PrivateRedis) -> None:
    async def main() -> None:
        clock, a, va, b, vb = pair(private_redis.url)
        a.begin("gpu-1")
        b.begin("gpu-1")
        assert await va.exchange() and await vb.exchange()
        assert b.snapshot().load("gpu-1").in_flight == 2

        private_redis.kill()
        # Within the staleness bound the last view still holds; past it, b's own alone.
        assert not await vb.exchange()
        assert b.snapshot().load("gpu-1").in_flight == 2
        clock.now += 2.5
        assert not await vb.exchange()
        assert b.snapshot().load("gpu-1").in_flight == 1 and vb.replicas == 1
        # Routing records keep going into the outbox while Redis is away, and never raise.
        p = fingerprints(DOC)
        b.prefixes.record("gpu-3", p.fps, p.tokens)

        private_redis.start()  # same port: the clients reconnect by themselves
        assert await vb.exchange() and await va.exchange()
        assert a.snapshot().load("gpu-1").in_flight == 2
        b.prefixes.record("gpu-3", p.fps, p.tokens)
        assert await vb.exchange() and await va.exchange()
        assert a.prefixes.matched(p.fps, p.tokens, {"gpu-3"}) == {"gpu-3": sum(p.tokens)}
        await va.stop()
        await vb.stop()

    asyncio.run(main())


def test_the_background_exchange_runs_and_a_stopped_replica_leaves_at_once(
        private_redis: PrivateRedis) -> None:
    async def main() -> None:
        _, a, va, b, vb = pair(private_redis.url, 60.0)
        a.begin("gpu-1")
        a.start()  # the collector starts its view's task (no probes: no scraper)
        await poll(lambda: va.exchanges >= 1)
        assert await vb.exchange() and vb.replicas == 2
        assert b.snapshot().load("gpu-1").in_flight == 1
        await a.stop()
        # Gone from the view now, although its heartbeat would count for a minute.
        assert await vb.exchange() and vb.replicas == 1
        assert b.snapshot().load("gpu-1").in_flight == 0
        await vb.stop()

    asyncio.run(main())
