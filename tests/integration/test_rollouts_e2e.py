"""Rollouts across two real `gateway serve` replicas sharing Redis (a fresh key prefix), with
fake vLLM backends whose behaviour the tests change while the rollout runs.

One policy holds one model per scenario, each with its own candidate backend and rollout, so
one pair of replicas serves every test: promotion, a rollback on each of several gate kinds,
pause/resume through the CLI, sticky sessions across replicas, a replica restarted mid-rollout.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import GatewayProcess
from tests.integration.tenancy_support import REDIS_URL, fresh_prefix, poll

ADMIN = "gw-admin-rollouts"
PRICE = {"input": "1", "output": "2"}
# scenario → (gates, candidate price multiplier)
SCENARIOS: dict[str, dict[str, Any]] = {
    # Loopback latencies on a busy machine are noisy: the promotion's margin is wide.
    "promote": {"error_rate": {"max_ratio": 3}, "latency_p95": {"max_ratio": 3}},
    "errors": {"error_rate": {"max": 0.05, "max_ratio": 2}},
    "ttft": {"ttft_p95": {"max_ratio": 1.5}},
    "tpot": {"tpot_p95": {"max_ratio": 1.5}},
    "latency": {"latency_p95": {"max_ratio": 1.5}},
    "length": {"length_share": {"max_ratio": 1.5, "max": 0.2}},
    "cost": {"cost_per_request": {"max_ratio": 1.2}},
    "control": {"latency_p95": {"max_ratio": 3}},
    "sticky": {"latency_p95": {"max_ratio": 3}},
    "restart": {"latency_p95": {"max_ratio": 3}},
}


def _policy(tmp: Path, prefix: str, base: FakeOpenAI, cands: dict[str, FakeOpenAI]
            ) -> dict[str, Any]:
    providers: dict[str, Any] = {"base": {"kind": "vllm", "base_url": base.url + "/v1"}}
    models: dict[str, Any] = {}
    for name, fake in cands.items():
        providers[f"cand-{name}"] = {"kind": "vllm", "base_url": fake.url + "/v1"}
        price = {k: str(int(v) * 3) for k, v in PRICE.items()} if name == "cost" else PRICE
        # Only "promote" moves on by itself: the others must stay in their first step (a
        # breach scenario waits there for its breach, however noisy the machine is).
        held = name != "promote"
        models[f"chat-{name}"] = {
            "deployments": [
                {"provider": "base", "model": "v1", "name": "v1", "pricing": [PRICE]},
                {"provider": f"cand-{name}", "model": "v2", "name": f"v2-{name}",
                 "pricing": [price]},
            ],
            "rollout": {
                "candidate": {"deployments": [f"v2-{name}"]},
                "steps": [{"percent": 50, "min_duration_s": 3600 if held else 0,
                           "min_requests": 20},
                          {"percent": 60, "min_duration_s": 0, "min_requests": 20}],
                "gates": SCENARIOS[name], "min_samples": 20,
            },
        }
    return {
        "server": {"admin_key": ADMIN},
        "state": {"redis_url": REDIS_URL, "key_prefix": prefix},
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": f"{tmp}/spill.jsonl",
                   "flush_interval_s": 0.05, "journal_dir": f"{tmp}/journal"},
        # A failing candidate must keep being measured, not taken out by the breaker.
        "router": {"circuit_breaker": {"failures": 10_000, "min_requests": 10_000}},
        "providers": providers,
        "models": models,
    }


@dataclass
class Cluster:
    a: GatewayProcess
    b: GatewayProcess
    base: FakeOpenAI
    cands: dict[str, FakeOpenAI]
    policy: dict[str, Any]

    def status(self, model: str, replica: GatewayProcess | None = None) -> dict[str, Any]:
        r = httpx.get(f"{(replica or self.a).url}/admin/rollouts/{model}",
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def send(self, model: str, n: int, *, stream: bool = False, user: str | None = None,
             start: int = 0) -> list[str]:
        """n requests, alternately to each replica; the deployment that served each."""
        served = []
        for i in range(start, start + n):
            replica = (self.a, self.b)[i % 2]
            body: dict[str, Any] = {"model": model, "stream": stream,
                                    "messages": [{"role": "user", "content": "hi"}],
                                    "user": user or f"user-{i}"}
            r = httpx.post(replica.base_url + "/chat/completions", json=body, timeout=30)
            served.append(r.headers.get("x-gateway-deployment", f"HTTP {r.status_code}"))
        return served

    def until(self, model: str, status: str, *, stream: bool = False) -> dict[str, Any]:
        """Send traffic until the rollout reaches ``status`` (polled, with a deadline)."""
        sent = [0]

        def reached() -> dict[str, Any] | None:
            self.send(model, 10, stream=stream, start=sent[0])
            sent[0] += 10
            s = self.status(model)
            return s if s["status"] == status else None

        return poll(reached, timeout=300, interval=0.1, what=f"{model} {status}")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    prefixes = fresh_prefix()
    prefix = next(prefixes)
    tmp = Path(tempfile.mkdtemp(prefix="gw-rollouts-"))
    base = FakeOpenAI("base", vllm=True).start()
    cands = {name: FakeOpenAI(f"cand-{name}", vllm=True).start() for name in SCENARIOS}
    policy = _policy(tmp, prefix, base, cands)
    a = GatewayProcess(policy, tmp=tmp)
    b = GatewayProcess(policy, tmp=tmp)
    a.start(timeout=120)  # a loaded machine can take a while to import and bind
    b.start(timeout=120)
    try:
        yield Cluster(a, b, base, cands, policy)
    finally:
        a.stop()
        b.stop()
        for f in (base, *cands.values()):
            f.stop()
        next(prefixes, None)


def test_an_equal_candidate_is_promoted_and_then_serves_everything(cluster: Cluster) -> None:
    s = cluster.until("chat-promote", "promoted")
    assert s["percent"] == 100 and "every gate held" in s["reason"]
    assert cluster.status("chat-promote", cluster.b)["status"] == "promoted"
    before = len(cluster.base.requests)
    assert set(cluster.send("chat-promote", 20)) == {"v2-promote"}
    assert len(cluster.base.requests) == before


@pytest.mark.parametrize(("scenario", "stream", "gate"), [
    ("errors", False, "error_rate"),
    ("ttft", True, "ttft_p95"),
    ("tpot", True, "tpot_p95"),
    ("latency", False, "latency_p95"),
    ("length", False, "length_share"),
    ("cost", False, "cost_per_request"),
])
def test_a_breached_gate_rolls_the_candidate_back(cluster: Cluster, scenario: str,
                                                  stream: bool, gate: str) -> None:
    fake = cluster.cands[scenario]
    if scenario == "errors":
        fake.fail_next(10_000, status=503)
    elif scenario in ("ttft", "latency"):
        # Well above what a loaded machine adds to the baseline's loopback latency.
        fake.delay_next(10_000, seconds=0.6)
    elif scenario == "tpot":
        fake.chunk_delay = 0.1  # between tokens: ~100 ms per output token against ~1 ms
    elif scenario == "length":
        fake.finish_reason = "length"
    s = cluster.until(f"chat-{scenario}", "rolled_back", stream=stream)
    assert s["percent"] == 0 and gate in s["reason"]
    breach = next(g for g in s["last_transition_gates"] if g["verdict"] == "breach")
    assert breach["candidate_n"] >= 20
    if breach["gate"].endswith(".max_ratio"):  # an absolute cap needs only the candidate's
        assert breach["baseline_n"] >= 20
    # Both replicas route everything to the baseline at once (the other reads Redis).
    poll(lambda: cluster.status(f"chat-{scenario}", cluster.b)["status"] == "rolled_back")
    before = len(fake.requests)
    served = cluster.send(f"chat-{scenario}", 20, stream=stream, start=10_000)
    assert set(served) == {"v1"} and len(fake.requests) == before


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "rollout", *args, "--url",
                           cluster.b.url, "--admin-key", ADMIN, "--json"],
                          capture_output=True, text=True, timeout=60)


def test_pause_and_resume_from_the_cli_on_either_replica(cluster: Cluster) -> None:
    import json

    out = _cli(cluster, "pause", "chat-control")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "paused"
    assert cluster.status("chat-control")["status"] == "paused"  # replica a sees it too
    again = _cli(cluster, "pause", "chat-control")
    assert again.returncode == 1 and "cannot pause" in again.stderr
    out = _cli(cluster, "resume", "chat-control")
    assert json.loads(out.stdout)["status"] == "running"
    out = _cli(cluster, "abort", "chat-control")
    assert json.loads(out.stdout)["status"] == "rolled_back"
    missing = _cli(cluster, "status", "no-such-model")
    assert missing.returncode == 1 and "has no rollout" in missing.stderr


def test_a_session_stays_on_one_arm_on_both_replicas(cluster: Cluster) -> None:
    arms = {}
    for u in range(30):
        served = cluster.send("chat-sticky", 6, user=f"session-{u}")
        assert len(set(served)) == 1, served  # 3 requests on each replica, one arm
        arms[u] = served[0]
    assert set(arms.values()) == {"v1", "v2-sticky"}  # 50 %: both arms have sessions


def test_a_restarted_replica_resumes_the_rollout(cluster: Cluster) -> None:
    before = cluster.send("chat-restart", 40)
    assert cluster.status("chat-restart")["status"] == "running"
    cluster.b.stop()
    cluster.b.start(timeout=120)
    # Both replicas' counts are in Redis (b flushed its own as it stopped).
    s = poll(lambda: (lambda s: s if s["baseline"]["served"] + s["candidate"]["served"] >= 40
                      else None)(cluster.status("chat-restart", cluster.b)))
    assert (s["status"], s["step"], s["percent"]) == ("running", 0, 50)
    assert cluster.send("chat-restart", 40) == before  # same users, same arms
