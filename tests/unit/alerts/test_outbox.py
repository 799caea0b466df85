"""The dispatcher with its outbox in a SQLite file: a shutdown hands unsent deliveries back and
the next dispatcher sends them, continuing their attempts; the log is read back at start; a
delivery whose webhook left the policy is abandoned, durably; a live owner's rows are not
taken by another dispatcher."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.delivery import Dispatcher
from gateway.alerts.events import AlertEvent
from gateway.alerts.outbox import Outbox
from gateway.policy.alerts import Alerts, Webhook
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.unit.alerts.test_delivery import SECRET, receiver, until

pytestmark = pytest.mark.asyncio
__all__ = ["receiver"]  # the fixture this module uses


def config(receiver: WebhookReceiver, name: str = "hq", **kw: Any) -> Alerts:
    hook = Webhook(name=name, url=receiver.url + "/hook", secret=SECRET)  # type: ignore[arg-type]
    return Alerts(backoff_initial_s=0.05, backoff_max_s=0.1, max_attempts=50,
                  outbox_lease_s=1, webhooks=[hook], **kw)


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT id, status, attempts, lease_until FROM alert_deliveries"
                         ).fetchall()


async def test_a_shutdown_hands_unsent_deliveries_to_the_next_start(
        receiver: WebhookReceiver, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    cfg = config(receiver)
    receiver.fail_next(3, status=503)
    first = Dispatcher(cfg, outbox=Outbox(url))
    await first.start()
    entry = first.submit(AlertEvent("rollout", {"message": "x"}), cfg.webhooks[0])
    await until(lambda: entry.attempts >= 2, "two failed attempts")
    await first.close(grace_s=0.0)
    [(row_id, status, attempts, lease)] = rows(tmp_path / "ledger.db")
    assert row_id == entry.id and status == "retrying" and lease == 0.0  # handed back
    assert attempts >= 2

    second = Dispatcher(cfg, outbox=Outbox(url))
    await second.start()
    try:
        await until(lambda: rows(tmp_path / "ledger.db")[0][1] == "delivered", "resumed")
        [logged] = [d.public() for d in second.log]
        assert logged["id"] == entry.id and logged["status"] == "delivered"
        assert logged["attempts"] == 4  # three refused, then delivered
    finally:
        await second.close()
    assert len(receiver.delivered()) == 1
    assert len({r.headers["X-Gateway-Delivery"] for r in receiver.received}) == 1

    # A third start shows the finished delivery in its log, and sends nothing again.
    third = Dispatcher(cfg, outbox=Outbox(url))
    await third.start()
    try:
        await until(lambda: len(third.log) == 1, "the log read back")
        assert third.log[0].public()["status"] == "delivered"
    finally:
        await third.close()
    assert len(receiver.received) == 4


async def test_a_live_owners_rows_stay_its_own_and_a_removed_webhook_abandons(
        receiver: WebhookReceiver, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    cfg = config(receiver)
    receiver.hang_next(1)
    owner = Dispatcher(cfg, outbox=Outbox(url))
    other = Dispatcher(cfg, outbox=Outbox(url))
    await owner.start()
    await other.start()
    try:
        owner.submit(AlertEvent("rollout", {"message": "x"}), cfg.webhooks[0])
        await until(lambda: receiver.hanging == 1, "the owner's attempt in flight")
        # Three lease periods: the owner renews, so the other never adopts the row.
        await asyncio.sleep(3.0)
        assert other.pending == 0 and len(receiver.received) == 1
    finally:
        await other.close()
        await owner.close(grace_s=0.0)
    # The webhook left the policy before the next start: nobody to send it to.
    gone = Dispatcher(config(receiver, name="elsewhere"), outbox=Outbox(url))
    await gone.start()
    try:
        await until(lambda: rows(tmp_path / "ledger.db")[0][1] == "abandoned", "abandoned")
    finally:
        await gone.close()
