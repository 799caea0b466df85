"""Traffic follows weights (±2 points over 10,000 requests); weight 0 drains; reload swaps."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import httpx
import pytest
import yaml

from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


async def _split(url: str, n: int, concurrency: int = 25) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def worker(k: int) -> None:
            for _ in range(k):
                async with s.post(url, json=BODY) as r:
                    assert r.status == 200
                    await r.read()
                    counts[r.headers["x-gateway-deployment"]] += 1
        per = n // concurrency
        await asyncio.gather(*[worker(per) for _ in range(concurrency)])
    return counts


def test_weights_split_traffic_within_two_points(fakes, gateway, tmp_path) -> None:
    fs = [fakes(n, words=1) for n in ("a", "b", "c", "d")]
    weights = {"a": 5, "b": 3, "c": 2, "d": 0}
    gw = gateway(simple_policy(tmp_path, {f.name: provider(f) for f in fs}, {
        "chat": {"deployments": [{"provider": n, "model": "m", "weight": w}
                                 for n, w in weights.items()]}}))
    n = 10_000
    counts = asyncio.run(_split(gw.base_url + "/chat/completions", n))
    total = sum(counts.values())
    assert total == n
    for name, w in weights.items():
        share = counts.get(f"{name}/m", 0) / total
        assert abs(share - w / 10) <= 0.02, (name, share)
    assert counts.get("d/m", 0) == 0


def test_hot_reload_changes_weights_and_keeps_last_good(fakes, gateway, tmp_path) -> None:
    a, b = fakes("a"), fakes("b")
    policy = simple_policy(tmp_path, {"a": provider(a), "b": provider(b)}, {
        "chat": {"deployments": [{"provider": "a", "model": "m", "weight": 1},
                                 {"provider": "b", "model": "m", "weight": 0}]}})
    gw = gateway(policy)

    def served() -> str:
        r = httpx.post(gw.base_url + "/chat/completions", json=BODY)
        assert r.status_code == 200
        return r.headers["x-gateway-deployment"]

    assert {served() for _ in range(5)} == {"a/m"}
    policy["models"]["chat"]["deployments"][0]["weight"] = 0
    policy["models"]["chat"]["deployments"][1]["weight"] = 1
    time.sleep(0.01)  # distinct mtime
    gw.policy_path.write_text(yaml.safe_dump(policy))
    assert wait_until(lambda: served() == "b/m", timeout=10)
    # A broken file is rejected: traffic keeps flowing on the last good policy.
    gw.policy_path.write_text("models: [broken")
    time.sleep(2.5)
    assert {served() for _ in range(5)} == {"b/m"}
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_policy_reloads_total{result="rejected"}' in metrics


@pytest.mark.asyncio
async def test_reload_under_load_drops_nothing(fakes, gateway, tmp_path) -> None:
    a, b = fakes("a"), fakes("b")
    policy = simple_policy(tmp_path, {"a": provider(a), "b": provider(b)}, {
        "chat": {"deployments": [{"provider": "a", "model": "m"}]}})
    gw = gateway(policy)
    url = gw.base_url + "/chat/completions"
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with s.post(url, json=BODY) as r:
                await r.read()
                statuses.append(r.status)

    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.create_task(load(s)) for _ in range(8)]
        for i in range(3):
            await asyncio.sleep(0.3)
            dep = {"provider": "b" if i % 2 == 0 else "a", "model": "m"}
            policy["models"]["chat"]["deployments"] = [dep]
            gw.policy_path.write_text(yaml.safe_dump(policy))
            await asyncio.sleep(1.2)
        stop.set()
        await asyncio.gather(*tasks)
    assert statuses and set(statuses) == {200}
