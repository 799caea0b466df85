"""The gateway chooses the ledger's keys: a client that reuses `x-request-id` gets one record
per request, every one billed and reported, across tenants too (issue 8, item 5)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.accounting.reports import run_report
from gateway.keys import generate_key, hash_key
from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import records

A, B = generate_key(), generate_key()


def test_reused_client_ids_are_each_billed_and_reported(fakes: Any, gateway: Any,
                                                        tmp_path: Any) -> None:
    up = fakes("up")
    gw = gateway(simple_policy(
        tmp_path, {"up": provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m",
                                   "pricing": [{"input": "1", "output": "1"}]}]}},
        tenants={"a": {"keys": [{"id": "ka", "hash": hash_key(A)}]},
                 "b": {"keys": [{"id": "kb", "hash": hash_key(B)}]}}))
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    seen_keys = set()
    for i in range(7):
        key = A if i < 6 else B  # the seventh: another tenant reusing the same id
        stream = i % 2 == 1
        r = httpx.post(gw.base_url + "/chat/completions", json={**body, "stream": stream},
                       headers={"authorization": f"Bearer {key}", "x-request-id": "dup-1"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "dup-1"  # echoed as the client sent it
        seen_keys.add(r.headers["x-gateway-request-id"])
    assert len(seen_keys) == 7 and "dup-1" not in seen_keys
    assert wait_until(lambda: len(records(tmp_path)) == 7, timeout=10)
    recs = records(tmp_path)
    assert {r.client_request_id for r in recs} == {"dup-1"}
    assert {r.request_id for r in recs} == seen_keys
    assert sorted(r.tenant for r in recs) == ["a"] * 6 + ["b"]
    assert all(r.cost_usd > 0 for r in recs)
    # Answered, streams included: no error left over from the admission marker.
    assert {(r.status, r.error_code, r.stream) for r in recs} == {(200, None, False),
                                                                 (200, None, True)}
    today = datetime.now(UTC).date()
    report = run_report(f"sqlite:///{tmp_path}/ledger.db", today, today, group_by=["tenant"])
    assert {row.group["tenant"]: row.requests for row in report.rows} == {"a": 6, "b": 1}


def test_the_client_id_is_only_stored_when_usable(fakes: Any, gateway: Any,
                                                  tmp_path: Any) -> None:
    up = fakes("up")
    gw = gateway(simple_policy(tmp_path, {"up": provider(up)},
                               {"chat": {"deployments": [{"provider": "up", "model": "m"}]}}))
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    r1 = httpx.post(gw.base_url + "/chat/completions", json=body)
    r2 = httpx.post(gw.base_url + "/chat/completions", json=body,
                    headers={"x-request-id": "x" * 500})
    for r in (r1, r2):
        assert r.headers["x-request-id"] == r.headers["x-gateway-request-id"]
    assert wait_until(lambda: len(records(tmp_path)) == 2, timeout=10)
    assert all(rec.client_request_id is None for rec in records(tmp_path))
