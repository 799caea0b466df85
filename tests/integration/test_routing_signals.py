"""The gateway routing across three fake vLLM endpoints, using what they report."""

from __future__ import annotations

import collections

import httpx
import pytest

from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def pool(fakes, gateway, tmp_path, strategy: str, interval: float = 0.5):
    fs = [fakes(n, vllm=True, words=1) for n in ("a", "b", "c")]
    gw = gateway(simple_policy(
        tmp_path, {f.name: provider(f, kind="vllm") for f in fs},
        {"chat": {"strategy": strategy,
                  "deployments": [{"provider": f.name, "model": "m"} for f in fs]}},
        router={"health_check_interval_s": interval, "metrics_stale_s": 5}))
    return fs, gw


def served(gw, **extra) -> str:
    r = httpx.post(gw.base_url + "/chat/completions", json={**BODY, **extra}, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-gateway-deployment"]


def test_least_busy_avoids_endpoint_reporting_a_long_queue(fakes, gateway, tmp_path) -> None:
    fs, gw = pool(fakes, gateway, tmp_path, "least-busy")
    fs[0].waiting = 50
    fs[1].waiting = 40
    # Wait until a scrape has seen the queues, then every request goes to the idle endpoint.
    assert wait_until(lambda: {served(gw) for _ in range(6)} == {"c/m"}, timeout=5)
    counts = collections.Counter(served(gw) for _ in range(30))
    assert counts == {"c/m": 30}
    fs[2].waiting = 100
    assert wait_until(lambda: {served(gw) for _ in range(6)} == {"b/m"}, timeout=5)


def test_prefix_affinity_keeps_a_session_on_one_endpoint(fakes, gateway, tmp_path) -> None:
    _fs, gw = pool(fakes, gateway, tmp_path, "prefix-affinity")
    for user in ("alice", "bob", "carol", "dave"):
        got = {served(gw, user=user) for _ in range(10)}
        assert len(got) == 1, (user, got)
    # Without a session key the conversation's head decides: every turn of one conversation
    # (same system prompt and first question, growing history) lands where its prefix is cached.
    sys_prompt = {"role": "system", "content": "You are a support bot for ACME. " * 40}
    history = [sys_prompt, {"role": "user", "content": "my order is late"}]
    hits = set()
    for turn in range(8):
        hits.add(served(gw, messages=history))
        history = [*history, {"role": "assistant", "content": f"answer {turn}"},
                   {"role": "user", "content": f"follow-up {turn}"}]
    assert len(hits) == 1


def test_prefix_affinity_spills_over_when_its_endpoint_is_queued(fakes, gateway, tmp_path) -> None:
    fs, gw = pool(fakes, gateway, tmp_path, "prefix-affinity")
    home = served(gw, user="zed")
    busy = next(f for f in fs if f"{f.name}/m" == home)
    busy.waiting = 500
    assert wait_until(lambda: served(gw, user="zed") != home, timeout=5)
    busy.waiting = 0
    assert wait_until(lambda: served(gw, user="zed") == home, timeout=5)


def test_killed_endpoint_is_detected_and_traffic_moves(fakes, gateway, tmp_path) -> None:
    fs, gw = pool(fakes, gateway, tmp_path, "weighted")
    assert {served(gw) for _ in range(9)} == {"a/m", "b/m", "c/m"}
    fs[1].stop()

    def first_try_never_b() -> bool:
        rs = [httpx.post(gw.base_url + "/chat/completions", json=BODY) for _ in range(6)]
        return all(r.headers["x-gateway-attempts"] == "1" and
                   r.headers["x-gateway-deployment"] != "b/m" for r in rs)

    # Health checks every 0.5 s take it out: no request even tries it any more.
    assert wait_until(first_try_never_b, timeout=5)
    assert httpx.get(gw.url + "/ready").json()["deployments"]["b/m"] in ("unhealthy", "cooldown")
    fs[1].start()
    assert wait_until(lambda: "b/m" in {served(gw) for _ in range(6)}, timeout=8)


@pytest.mark.parametrize("strategy", ["latency", "cost"])
def test_other_strategies_serve_and_respect_weight_zero(fakes, gateway, tmp_path,
                                                         strategy) -> None:
    fs = [fakes(n, words=1) for n in ("a", "b")]
    gw = gateway(simple_policy(tmp_path, {f.name: provider(f) for f in fs}, {
        "chat": {"strategy": strategy, "deployments": [
            {"provider": "a", "model": "m", "weight": 0,
             "pricing": [{"input": "0.01", "output": "0.01"}]},
            {"provider": "b", "model": "m", "pricing": [{"input": "5", "output": "5"}]}]}}))
    assert {served(gw) for _ in range(10)} == {"b/m"}
