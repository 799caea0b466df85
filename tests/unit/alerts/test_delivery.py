"""The dispatcher against a real receiver on loopback: retries with backoff, give-up rules,
signatures, the bound on what waits, and the delivery log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.alerts.delivery import Dispatcher
from gateway.alerts.events import AlertEvent
from gateway.observability.metrics import Metrics
from gateway.policy.alerts import Alerts, Webhook
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.asyncio
SECRET = "whsec-unit"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    r.start()
    yield r
    r.stop()


def hook(receiver: WebhookReceiver, **kw: Any) -> Webhook:
    return Webhook(name="hq", url=receiver.url + "/hook", secret=SECRET, **kw)  # type: ignore[arg-type]


def config(**kw: Any) -> Alerts:
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return Alerts(**kw)


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.01)


def count(m: Metrics, event: str, outcome: str) -> float:
    v = m.registry.get_sample_value("gateway_alert_deliveries_total",
                                    {"event": event, "outcome": outcome})
    return v or 0.0


async def test_failed_attempts_are_retried_until_delivered(receiver: WebhookReceiver) -> None:
    receiver.fail_next(2, status=503)
    m = Metrics()
    d = Dispatcher(config(), m)
    await d.start()
    try:
        entry = d.submit(AlertEvent("rollout", {"message": "x"}), hook(receiver))
        await until(lambda: entry.status == "delivered", "delivery")
    finally:
        await d.close()
    assert [r.answered for r in receiver.received] == [503, 503, 200]
    assert all(r.signed for r in receiver.received)  # every attempt signed afresh
    assert len({r.headers["X-Gateway-Delivery"] for r in receiver.received}) == 1
    assert len({r.raw for r in receiver.received}) == 1
    assert entry.attempts == 3 and entry.response_status == 200 and entry.last_error is None
    assert count(m, "rollout", "retried") == 2 and count(m, "rollout", "delivered") == 1
    assert d.pending == 0


async def test_a_4xx_is_the_receiver_saying_no_and_is_not_retried(
        receiver: WebhookReceiver) -> None:
    receiver.fail_next(1, status=400)
    d = Dispatcher(config(), Metrics())
    await d.start()
    try:
        entry = d.submit(AlertEvent("rollout", {}), hook(receiver))
        await until(lambda: entry.status == "failed", "give-up")
    finally:
        await d.close()
    assert entry.attempts == 1 and entry.last_error == "HTTP 400"
    assert len(receiver.received) == 1


async def test_gives_up_after_max_attempts(receiver: WebhookReceiver) -> None:
    receiver.fail_next(5, status=500)
    m = Metrics()
    d = Dispatcher(config(max_attempts=3), m)
    await d.start()
    try:
        entry = d.submit(AlertEvent("circuit_open", {}), hook(receiver))
        await until(lambda: entry.status == "failed", "give-up")
    finally:
        await d.close()
    assert entry.attempts == 3 and len(receiver.received) == 3
    assert count(m, "circuit_open", "failed") == 1


async def test_connection_refused_is_retried_and_logged_by_host_only() -> None:
    dead = WebhookReceiver(SECRET)  # never started: its port refuses connections
    url = dead.url + "/services/T0/B0/TOKEN"
    d = Dispatcher(config(max_attempts=2), Metrics())
    await d.start()
    try:
        entry = d.submit(AlertEvent("rollout", {}),
                         Webhook(name="s", url=url, kind="slack"))
        await until(lambda: entry.status == "failed", "give-up")
    finally:
        await d.close()
    assert entry.attempts == 2 and entry.response_status is None
    assert entry.last_error is not None and "cannot connect to 127.0.0.1" in entry.last_error
    assert "TOKEN" not in str(entry.public())


async def test_a_full_queue_drops_and_counts_without_waiting(receiver: WebhookReceiver) -> None:
    receiver.hang_next(10)
    m = Metrics()
    d = Dispatcher(config(queue_size=2, concurrency=1), m)
    await d.start()
    try:
        a = d.submit(AlertEvent("rollout", {}), hook(receiver, timeout_s=30))
        b = d.submit(AlertEvent("rollout", {}), hook(receiver, timeout_s=30))
        c = d.submit(AlertEvent("rollout", {}), hook(receiver, timeout_s=30))
        await until(lambda: receiver.hanging == 1, "the receiver holding the first")
        assert (a.status, b.status, c.status) == ("pending", "pending", "dropped")
        assert d.dropped == 1 and d.pending == 2
        assert count(m, "rollout", "dropped") == 1
    finally:
        await d.close()
    # Shutdown ends what was still waiting, and says so.
    assert (a.status, b.status) == ("abandoned", "abandoned")
    assert d.pending == 0


async def test_log_keeps_the_newest_entries(receiver: WebhookReceiver) -> None:
    d = Dispatcher(config(log_size=2), Metrics())
    await d.start()
    try:
        entries = [d.submit(AlertEvent("rollout", {"n": i}), hook(receiver)) for i in range(3)]
        await until(lambda: all(e.status == "delivered" for e in entries), "deliveries")
    finally:
        await d.close()
    assert [e.event.data["n"] for e in d.log] == [1, 2]
    row = d.log[-1].public()
    assert row["host"] == f"127.0.0.1:{receiver.port}" and row["webhook"] == "hq"
    assert SECRET not in str(row)


async def test_shutdown_lets_a_due_delivery_go_out(receiver: WebhookReceiver) -> None:
    receiver.delay_next(1, seconds=0.3)
    d = Dispatcher(config(), Metrics())
    await d.start()
    entry = d.submit(AlertEvent("budget_exhausted", {}, "acme"), hook(receiver))
    await d.close()  # raised just before shutdown: still delivered
    assert entry.status == "delivered" and len(receiver.delivered()) == 1
