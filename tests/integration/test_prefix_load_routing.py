"""`prefix-load` in a real gateway across four fake vLLM endpoints: a burst of simultaneous
requests with tied scores spreads within bounded load, and a long shared prefix returns to the
endpoint it was sent to while that endpoint is not loaded."""

from __future__ import annotations

import asyncio
import collections
import math

import aiohttp
import httpx

from tests.integration.conftest import provider, simple_policy

NAMES = ("a", "b", "c", "d")


def pool(fakes, gateway, tmp_path):
    fs = [fakes(n, vllm=True, words=1) for n in NAMES]
    gw = gateway(simple_policy(
        tmp_path, {f.name: provider(f, kind="vllm") for f in fs},
        {"chat": {"strategy": "prefix-load",
                  "deployments": [{"provider": f.name, "model": "m"} for f in fs]}},
        router={"health_check_interval_s": 0.5, "metrics_stale_s": 5}))
    return fs, gw


async def _burst(url: str, n: int, body: dict) -> collections.Counter[str]:
    conn = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> str:
            async with s.post(url, json=body) as r:
                assert r.status == 200, await r.text()
                await r.read()
                return r.headers["x-gateway-deployment"]
        got = await asyncio.gather(*[one() for _ in range(n)])
    return collections.Counter(got)


def test_a_burst_of_50_tied_requests_spreads_within_bounded_load(fakes, gateway,
                                                                  tmp_path) -> None:
    fs, gw = pool(fakes, gateway, tmp_path)
    for f in fs:  # every request stays in flight while the rest of the burst is routed
        f.delay_next(50, seconds=1.0)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    counts = asyncio.run(_burst(gw.base_url + "/chat/completions", 50, body))
    assert sum(counts.values()) == 50
    assert set(counts) == {f"{n}/m" for n in NAMES}
    # Bounded load: nobody takes more than its share plus two (herding would put most on one).
    assert max(counts.values()) <= math.ceil(50 / len(NAMES)) + 2, counts


def test_a_long_shared_prefix_returns_to_its_endpoint(fakes, gateway, tmp_path) -> None:
    _fs, gw = pool(fakes, gateway, tmp_path)
    homes = {}
    for doc in range(6):
        system = f"[document {doc}] " + "Firmware notes for the ACME X200 router. " * 150

        def ask(q: str, system: str = system) -> str:
            r = httpx.post(gw.base_url + "/chat/completions", timeout=10, json={
                "model": "chat", "messages": [{"role": "system", "content": system},
                                              {"role": "user", "content": q}]})
            assert r.status_code == 200, r.text
            return r.headers["x-gateway-deployment"]

        homes[doc] = ask("first question")
        assert {ask(f"question {i}") for i in range(5)} == {homes[doc]}
    assert len(set(homes.values())) >= 2  # documents spread over the pool


def test_session_key_policy_picks_what_pins_a_conversation(fakes, gateway, tmp_path) -> None:
    fs = [fakes(n, vllm=True, words=1) for n in NAMES]
    deployments = [{"provider": f.name, "model": "m"} for f in fs]
    gw = gateway(simple_policy(
        tmp_path, {f.name: provider(f, kind="vllm") for f in fs},
        {"by-user": {"strategy": "prefix-affinity", "session_key": "user",
                     "deployments": deployments},
         "by-header": {"strategy": "prefix-affinity", "session_key": "header",
                       "deployments": deployments}}))

    def served(model: str, i: int, user: str, conv: str) -> str:
        r = httpx.post(gw.base_url + "/chat/completions", timeout=10,
                       headers={"x-session-id": conv},
                       json={"model": model, "user": user,
                             "messages": [{"role": "user", "content": f"question {i}"}]})
        assert r.status_code == 200, r.text
        return r.headers["x-gateway-deployment"]

    # One user across many conversations: `user` keeps them together...
    assert len({served("by-user", i, "alice", f"conv-{i}") for i in range(12)}) == 1
    # ...`header` follows the conversation, whoever sends it.
    assert len({served("by-header", i, f"user-{i}", "conv-1") for i in range(12)}) == 1
    assert len({served("by-header", i, "alice", f"conv-{i}") for i in range(12)}) > 1
