"""A rollback as the operator sees it from a real gateway: the signed `rollout` webhook with
the gate's figures, the Prometheus counter, and the status naming the gate."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.harness import Gateway
from tests.integration.tenancy_support import poll

ADMIN = "gw-admin-events"
SECRET = "rollout-webhook-secret"


def test_a_rollback_reaches_the_webhook_and_the_counter(tmp_path: Path) -> None:
    with FakeOpenAI("base") as base, FakeOpenAI("cand") as cand, \
            WebhookReceiver(SECRET) as receiver:
        policy = {
            "server": {"admin_key": ADMIN},
            "ledger": {"url": f"sqlite:///{tmp_path}/ledger.db",
                       "spill_path": f"{tmp_path}/spill.jsonl", "flush_interval_s": 0.05},
            "router": {"circuit_breaker": {"failures": 10_000, "min_requests": 10_000}},
            "alerts": {"webhooks": [{"name": "deploys", "url": receiver.url + "/hook",
                                     "kind": "json", "secret": "${ROLLOUT_SECRET}",
                                     "events": ["rollout"]}]},
            "providers": {"base": {"kind": "openai-compatible", "base_url": base.url + "/v1"},
                          "cand": {"kind": "openai-compatible", "base_url": cand.url + "/v1"}},
            "models": {"chat": {
                "deployments": [{"provider": "base", "model": "v1", "name": "v1"},
                                {"provider": "cand", "model": "v2", "name": "v2"}],
                "rollout": {"candidate": {"deployments": ["v2"]},
                            "steps": [{"percent": 50, "min_duration_s": 3600}],
                            "gates": {"error_rate": {"max_ratio": 2}}, "min_samples": 20}}},
        }
        cand.fail_next(10_000, status=503)
        with Gateway(policy, env={"ROLLOUT_SECRET": SECRET}, tmp=tmp_path) as gw:
            sent = [0]

            def rolled_back() -> bool:
                for _ in range(10):
                    httpx.post(gw.base_url + "/chat/completions", timeout=30, json={
                        "model": "chat", "user": f"u{sent[0]}",
                        "messages": [{"role": "user", "content": "hi"}]})
                    sent[0] += 1
                return any(r.body["data"].get("transition") == "rolled_back"
                           for r in receiver.delivered("rollout"))

            poll(rolled_back, timeout=60, interval=0.1, what="rollback webhook")
            hook = next(r for r in receiver.delivered("rollout")
                        if r.body["data"].get("transition") == "rolled_back")
            assert hook.signed
            data = hook.body["data"]
            assert data["model"] == "chat" and "error_rate.max_ratio" in data["reason"]
            assert data["gate"]["candidate_n"] >= 20 and data["gate"]["baseline_n"] >= 20
            assert data["gate"]["candidate"] > data["gate"]["baseline"]
            metrics = httpx.get(gw.url + "/metrics", timeout=30).text
            assert 'transition="rolled_back"} 1.0' in metrics
            assert any(r.body["data"].get("transition") == "started"
                       for r in receiver.delivered("rollout"))
