"""Shadow traffic on a real `gateway serve` (embedded default: rollout state in memory): copies
of baseline requests reach the candidate, their ledger records are billed to the platform
tenant the policy names and never to the client's, and the gates count them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import GatewayProcess
from tests.integration.tenancy_support import policy_key, poll

ADMIN = "gw-admin-shadow"
PRICE = {"input": "1", "output": "2"}


def _rows(db: Path, query: str) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(query)]
        except sqlite3.OperationalError:
            return []  # the writer has not created its tables yet


def test_shadow_copies_are_billed_to_the_platform_tenant(tmp_path: Path) -> None:
    app_key = policy_key("apps-key")
    with FakeOpenAI("base", vllm=True) as base, FakeOpenAI("cand", vllm=True) as cand:
        policy = {
            "server": {"admin_key": ADMIN},
            "ledger": {"url": f"sqlite:///{tmp_path}/ledger.db",
                       "spill_path": f"{tmp_path}/spill.jsonl", "flush_interval_s": 0.05},
            "providers": {"base": {"kind": "vllm", "base_url": base.url + "/v1"},
                          "cand": {"kind": "vllm", "base_url": cand.url + "/v1"}},
            "models": {"chat": {
                "deployments": [
                    {"provider": "base", "model": "v1", "name": "v1", "pricing": [PRICE]},
                    {"provider": "cand", "model": "v2", "name": "v2", "pricing": [PRICE]}],
                "rollout": {
                    "candidate": {"deployments": ["v2"]},
                    # 1 % served, held: the candidate is judged on shadow copies.
                    "steps": [{"percent": 1, "min_duration_s": 3600}],
                    "gates": {"latency_p95": {"max_ratio": 5}},
                    "min_samples": 10,
                    "shadow": {"percent": 100, "tenant": "platform"}}}},
            "tenants": {"apps": {"keys": [app_key.entry()]}, "platform": {}},
        }
        with GatewayProcess(policy, tmp=tmp_path) as gw:
            served = []
            for i in range(30):
                r = httpx.post(gw.base_url + "/chat/completions", timeout=30,
                               headers={"Authorization": f"Bearer {app_key.key}"},
                               json={"model": "chat", "user": f"u{i}", "stream": i % 2 == 0,
                                     "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                served.append((r.headers["x-gateway-deployment"],
                               r.headers["x-gateway-request-id"]))
            originals = {rid for dep, rid in served if dep == "v1"}
            db = tmp_path / "ledger.db"
            shadows = poll(lambda: (lambda rows: rows if len(rows) >= len(originals) else None)(
                _rows(db, "SELECT * FROM requests WHERE key_id LIKE 'shadow:%'")),
                timeout=30, what="shadow records")
            assert {r["tenant"] for r in shadows} == {"platform"}
            assert {r["client_request_id"] for r in shadows} == originals
            assert all(r["status"] == 200 and float(r["cost_usd"]) > 0 for r in shadows)
            apps = _rows(db, "SELECT * FROM requests WHERE tenant = 'apps'")
            assert len(apps) == 30  # one record per client request, none for the copies
            assert len(cand.requests) == len(shadows) + sum(d == "v2" for d, _ in served)
            status = poll(lambda: (lambda s: s if s["candidate"]["requests"] >= len(originals)
                                   else None)(httpx.get(
                                       gw.url + "/admin/rollouts/chat", timeout=30,
                                       headers={"Authorization": f"Bearer {ADMIN}"}).json()))
            # The copies count for the gates, but not as traffic the candidate served.
            assert status["candidate"]["served"] == sum(d == "v2" for d, _ in served)
            gate = status["gates"][0]
            assert gate["candidate_n"] >= len(originals) >= 10
