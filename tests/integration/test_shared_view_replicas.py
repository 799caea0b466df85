"""Two real `gateway serve` replicas sharing one Redis route one prefix to one backend: each
document's questions, sent alternately to replica A and replica B, all land on the fake vLLM
backend the first one went to — B knows where A sent it (and A where B did) through the
shared view. Asserted on what the backends received, never on timing: between two requests
the test waits (polling Redis, with a deadline) until the other replica's exchange has read
the routing record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.fakes.base import wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import GatewayProcess
from tests.integration.conftest import provider, simple_policy
from tests.integration.tenancy_support import REDIS_URL, redis_prefix

__all__ = ["redis_prefix"]  # fixture used by this module

NAMES = ("a", "b", "c", "d")
DOCS = 3
ASKS = 4  # per document, alternating replicas


@pytest.fixture
def backends() -> Iterator[list[FakeOpenAI]]:
    fs = [FakeOpenAI(n, vllm=True, words=1).start() for n in NAMES]
    yield fs
    for f in fs:
        f.stop()


def _policy(tmp: Path, fs: list[FakeOpenAI], prefix: str, seed: int) -> dict:
    """Each replica's own router seed: with one seed, two replicas fed the same sequence of
    new prompts would make the same random picks and agree without sharing anything."""
    tmp.mkdir(parents=True, exist_ok=True)
    return simple_policy(
        tmp, {f.name: provider(f, kind="vllm") for f in fs},
        {"chat": {"strategy": "prefix-load",
                  "deployments": [{"provider": f.name, "model": "m"} for f in fs]}},
        router={"health_check_interval_s": 0.5, "metrics_stale_s": 5, "seed": seed},
        state={"redis_url": REDIS_URL, "key_prefix": prefix})


def _doc(d: int) -> str:
    return f"[manual {d}] " + f"Chapter {d}: servicing the X200 router's fan tray. " * 120


class View:
    """Reads the shared view's keys, to wait until a replica has exchanged."""

    def __init__(self, prefix: str) -> None:
        self.r = redis.Redis.from_url(REDIS_URL)
        self.stream = prefix + "view:prefixes"
        self.beats = prefix + "view:beats"

    def entries(self) -> int:
        return int(self.r.xlen(self.stream))

    def replicas(self) -> list[str]:
        return [m.decode() for m in self.r.zrange(self.beats, 0, -1)]

    def read_by_others(self, before: int) -> None:
        """Wait until a new stream entry exists and every replica has exchanged twice since
        it was added (the first exchange reads it, the second starts after it was applied)."""
        assert wait_until(lambda: self.entries() > before, timeout=10), "no record published"
        newest = self.r.xrevrange(self.stream, count=1)[0][0].decode()
        added_ms = int(newest.split("-")[0])
        for replica in self.replicas():
            def beat(replica: str = replica) -> float:
                return float(self.r.zscore(self.beats, replica) or 0)
            assert wait_until(lambda: beat() > added_ms, timeout=10)
            first = beat()
            assert wait_until(lambda first=first: beat() > first, timeout=10)


def test_one_prefix_sent_alternately_to_two_replicas_lands_on_one_backend(
        backends: list[FakeOpenAI], redis_prefix: str, tmp_path: Path) -> None:
    a = GatewayProcess(_policy(tmp_path / "a", backends, redis_prefix, 1), tmp=tmp_path / "a")
    b = GatewayProcess(_policy(tmp_path / "b", backends, redis_prefix, 2), tmp=tmp_path / "b")
    view = View(redis_prefix)
    try:
        a.start()
        b.start()
        assert wait_until(lambda: len(view.replicas()) == 2, timeout=10)
        for d in range(DOCS):
            for i in range(ASKS):
                replica = (a, b)[i % 2]
                before = view.entries()
                r = httpx.post(replica.base_url + "/chat/completions", timeout=10, json={
                    "model": "chat", "messages": [
                        {"role": "system", "content": _doc(d)},
                        {"role": "user", "content": f"question {i} about manual {d}"}]})
                assert r.status_code == 200, r.text
                view.read_by_others(before)
    finally:
        a.stop()
        b.stop()
        view.r.close()
    got: dict[int, dict[str, int]] = {}
    for f in backends:
        for body in f.bodies("/chat/completions"):
            d = int(body["messages"][0]["content"].split("]")[0].removeprefix("[manual "))
            got.setdefault(d, {}).setdefault(f.name, 0)
            got[d][f.name] += 1
    assert sorted(got) == list(range(DOCS))
    for d, where in got.items():
        # Every question of a manual went where its first one did, from either replica.
        assert len(where) == 1 and sum(where.values()) == ASKS, (d, where)
    assert len({next(iter(w)) for w in got.values()}) >= 2  # manuals spread over the pool
