"""Alert webhooks through the real gateway: budget thresholds and exhaustion from real traffic
against the OpenAI fake, circuit-open from a failing fake, delivered to a real receiver on
loopback that fails, hangs and verifies every signature; the delivery log over the admin API;
and once-only alerts across two replicas sharing Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.tenancy_support import (
    ADMIN_KEY,
    MSG,
    StampedFake,
    admin,
    fake_provider,
    pg_schema,
    policy_key,
    poll,
    redis_prefix,
    sdk,
    tenant_policy,
    up,
)

__all__ = ["pg_schema", "redis_prefix", "up"]  # fixtures used by this module

SECRET = "whsec-e2e-" + "7" * 16
ACME = policy_key("acme-1")
# The fake reports 11 prompt + 5 completion tokens: $0.021 a request of the $0.04 budget.
PRICE = {"input": "1000", "output": "2000"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    r.start()
    yield r
    r.stop()


def webhooks(receiver: WebhookReceiver, **json_extra: Any) -> list[dict[str, Any]]:
    return [{"name": "finance", "url": receiver.url + "/json", "kind": "json",
             "secret": "${ALERT_SECRET}", "events": ["budget_threshold", "budget_exhausted"],
             **json_extra},
            {"name": "oncall", "url": receiver.url + "/slack/T0/B0/SLACKTOKEN", "kind": "slack",
             "events": ["budget_exhausted", "circuit_open"]}]


def budget_policy(tmp: Any, schema: str, prefix: str, up: StampedFake,
                  hooks: list[dict[str, Any]], **alerts: Any) -> dict[str, Any]:
    return tenant_policy(
        tmp, schema, prefix, {"up": fake_provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m", "pricing": [PRICE]}]}},
        {"acme": {"keys": [ACME.entry()],
                  "budget": {"monthly_usd": "0.04", "alerts": [0.5, 1.0]}},
         "globex": {"keys": [policy_key("globex-1").entry()]}},
        alerts={"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "webhooks": hooks, **alerts})


ENV = {"ALERT_SECRET": SECRET}


def chat(gw: Any) -> int:
    try:
        sdk(gw.base_url, ACME.key).chat.completions.create(model="chat", messages=MSG,
                                                           max_tokens=1)
        return 200
    except openai.APIStatusError as e:
        assert e.code == "budget_exceeded", e
        return e.status_code


def quiet(gw: Any, settled: int) -> None:
    """Wait until `settled` requests have settled and every alert check and delivery ended."""
    deps = gw.app.state.deps
    poll(lambda: deps.settler.settled >= settled and not deps.alerts.busy, 20.0,
         what="alerts settled")


def events(receiver: WebhookReceiver, path: str, event: str) -> list[dict[str, Any]]:
    """Distinct events delivered to `path` (a retried delivery is one event)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in receiver.delivered(event):
        if r.path.startswith(path):
            seen.setdefault(r.headers["X-Gateway-Delivery"], r.body)
    return list(seen.values())


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_budget_thresholds_and_exhaustion_reach_both_webhooks_signed_after_retries(
        store: str, pg_schema: str, redis_prefix: str, up: StampedFake,
        receiver: WebhookReceiver, tmp_path: Any, gateway: Any) -> None:
    p = budget_policy(tmp_path, pg_schema, redis_prefix, up, webhooks(receiver))
    if store == "memory":  # one replica: limits and fire-once keys in process memory
        del p["state"]
        p["ledger"]["url"] = f"sqlite:///{tmp_path}/ledger.db"
    gw = gateway(p, env=ENV)
    receiver.fail_next(2, status=503)  # the first two attempts fail, whichever they are
    assert [chat(gw) for _ in range(4)] == [200, 200, 402, 402]
    quiet(gw, 4)

    thresholds = events(receiver, "/json", "budget_threshold")
    assert sorted(e["data"]["percent"] for e in thresholds) == [50, 100]
    assert {e["tenant"] for e in thresholds} == {"acme"}
    assert thresholds[0]["data"]["limit_usd"] == "0.04"
    exhausted = events(receiver, "/json", "budget_exhausted")
    assert len(exhausted) == 1  # two 402s, one alert
    data = exhausted[0]["data"]
    assert data["tenant"] == "acme" and data["period"] == "month"
    assert data["spent_usd"] == "0.042" and data["remaining_usd"] == "0"
    # The receiver verified the HMAC of every JSON delivery with the shared secret.
    assert all(r.signed for r in receiver.received if r.path == "/json")
    # Slack got the exhaustion as one text field, and nothing it did not subscribe to.
    slack = [r for r in receiver.delivered() if r.path.startswith("/slack")]
    assert len(slack) == 1 and list(slack[0].body) == ["text"]
    assert "acme" in slack[0].body["text"] and "402" in slack[0].body["text"]
    # Two attempts were refused and retried; the log shows it.
    assert sum(r.answered == 503 for r in receiver.received) == 2
    log = admin("GET", gw.url, "/admin/alerts/deliveries").json()
    assert len(log["data"]) == 4 and log["pending"] == 0 and log["dropped"] == 0
    assert all(d["status"] == "delivered" for d in log["data"])
    assert sum(d["attempts"] for d in log["data"]) == 4 + 2
    assert max(d["attempts"] for d in log["data"]) >= 2
    assert {d["host"] for d in log["data"]} == {f"127.0.0.1:{receiver.port}"}
    assert "SLACKTOKEN" not in str(log) and SECRET not in str(log)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_alert_deliveries_total{event="budget_exhausted",outcome="delivered"} 2.0' \
        in metrics


def test_a_hanging_receiver_never_holds_up_a_request(
        pg_schema: str, redis_prefix: str, up: StampedFake, receiver: WebhookReceiver,
        tmp_path: Any, gateway: Any) -> None:
    gw = gateway(budget_policy(tmp_path, pg_schema, redis_prefix, up,
                               webhooks(receiver, timeout_s=60)), env=ENV)
    receiver.hang_next(100)
    assert chat(gw) == 200  # crosses 50 %: its alert goes to a receiver that never answers
    poll(lambda: receiver.hanging >= 1, what="the receiver holding a delivery")
    # While the receiver holds it, requests are served and refused as ever.
    assert chat(gw) == 200
    assert chat(gw) == 402
    assert receiver.hanging >= 1 and receiver.delivered() == []
    log = admin("GET", gw.url, "/admin/alerts/deliveries?event=budget_threshold").json()
    assert log["data"] and all(d["status"] == "pending" for d in log["data"])


def test_delivery_log_is_admin_only_and_checks_its_parameters(
        pg_schema: str, redis_prefix: str, up: StampedFake, receiver: WebhookReceiver,
        tmp_path: Any, gateway: Any) -> None:
    gw = gateway(budget_policy(tmp_path, pg_schema, redis_prefix, up, webhooks(receiver)),
                 env=ENV)
    path = gw.url + "/admin/alerts/deliveries"
    for headers in ({}, {"Authorization": f"Bearer {ACME.key}"},
                    {"Authorization": "Bearer wrong"}):
        r = httpx.get(path, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.get(path, headers={"x-api-key": ADMIN_KEY})
    assert ok.status_code == 200 and ok.json() == {"object": "list", "data": [], "pending": 0,
                                                   "dropped": 0}
    for query, param in (("status=lost", "status"), ("event=budget", "event"),
                         ("limit=0", "limit"), ("limit=x", "limit")):
        r = admin("GET", gw.url, f"/admin/alerts/deliveries?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, query


def test_circuit_open_from_a_failing_backend(receiver: WebhookReceiver, tmp_path: Any,
                                              gateway: Any) -> None:
    flaky = StampedFake("flaky")
    flaky.start()
    try:
        flaky.fail_next(10, status=503)
        gw = gateway({
            "ledger": {"url": f"sqlite:///{tmp_path}/ledger.db",
                       "spill_path": f"{tmp_path}/spill.jsonl", "flush_interval_s": 0.05},
            "router": {"circuit_breaker": {"failures": 2, "cooldown_s": 30}},
            "providers": {"flaky": fake_provider(flaky)},
            "models": {"chat": {"deployments": [{"provider": "flaky", "model": "m",
                                                 "name": "flaky-m"}]}},
            "alerts": {"webhooks": webhooks(receiver)}}, env=ENV)
        client = sdk(gw.base_url, "unused")
        for _ in range(3):  # two failures open it; the third finds it open
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="chat", messages=MSG)
        quiet(gw, 3)
    finally:
        flaky.stop()
    slack = [r.body for r in receiver.delivered("circuit_open")]
    assert len(slack) == 1 and list(slack[0]) == ["text"]
    assert "flaky-m" in slack[0]["text"] and "30 s" in slack[0]["text"]
    assert events(receiver, "/json", "circuit_open") == []  # not subscribed


def test_two_replicas_sharing_redis_alert_once(pg_schema: str, redis_prefix: str,
                                               up: StampedFake, receiver: WebhookReceiver,
                                               tmp_path: Any, gateway: Any) -> None:
    p = budget_policy(tmp_path, pg_schema, redis_prefix, up, webhooks(receiver))
    a, b = gateway(p, env=ENV), gateway(p, env=ENV)
    assert [chat(a), chat(b)] == [200, 200]  # 50 % on one replica, 100 % on the other
    assert [chat(a), chat(b), chat(a), chat(b)] == [402] * 4  # both see the budget spent
    quiet(a, 3)
    quiet(b, 3)
    assert sorted(e["data"]["percent"] for e in events(receiver, "/json",
                                                       "budget_threshold")) == [50, 100]
    exhausted = events(receiver, "/json", "budget_exhausted")
    assert len(exhausted) == 1, exhausted
    assert len([r for r in receiver.delivered() if r.path.startswith("/slack")]) == 1
