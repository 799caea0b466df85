"""The alert outbox across process deaths: a real `gateway serve` accepts an alert while the
webhook receiver is down, is killed with SIGKILL, and the delivery still arrives — once —
from the replicas that come after it, whose delivery log shows it; on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest
from psycopg import sql

from tests.fakes.webhook_receiver import WebhookReceiver
from tests.harness import GatewayProcess
from tests.integration.tenancy_support import (
    ADMIN_KEY,
    MSG,
    PG_URL,
    StampedFake,
    admin,
    fake_provider,
    pg_schema,
    poll,
    sdk,
)

__all__ = ["pg_schema"]  # the fixture this module uses

SECRET = "whsec-outbox-" + "5" * 16


@pytest.fixture
def flaky() -> Iterator[StampedFake]:
    f = StampedFake("flaky")
    f.start()
    f.fail_next(100, status=503)
    yield f
    f.stop()


def _policy(tmp: Path, store: str, schema: str, flaky: StampedFake, hook_url: str
            ) -> dict[str, Any]:
    ledger: dict[str, Any] = {"url": f"sqlite:///{tmp}/ledger.db"} if store == "sqlite" \
        else {"url": PG_URL, "schema": schema}
    return {
        "server": {"admin_key": ADMIN_KEY},
        "ledger": {**ledger, "spill_path": f"{tmp}/spill.jsonl", "flush_interval_s": 0.05},
        "router": {"circuit_breaker": {"failures": 1, "cooldown_s": 60}},
        "providers": {"flaky": fake_provider(flaky)},
        "models": {"chat": {"deployments": [{"provider": "flaky", "model": "m",
                                             "name": "flaky-m"}]}},
        "alerts": {"backoff_initial_s": 0.2, "backoff_max_s": 0.5, "max_attempts": 100,
                   "outbox_lease_s": 1,
                   "webhooks": [{"name": "oncall", "url": hook_url, "secret": "${SECRET}",
                                 "events": ["circuit_open"]}]},
    }


def _outbox(store: str, tmp: Path, schema: str) -> list[tuple[Any, ...]]:
    q = "SELECT id, status, attempts FROM alert_deliveries"
    if store == "sqlite":
        conn = sqlite3.connect(tmp / "ledger.db")
        try:
            return conn.execute(q).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            conn.close()
    with psycopg.connect(PG_URL, autocommit=True) as pg:
        pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        try:
            return pg.execute(q).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_delivery_accepted_before_kill_9_arrives_once_after_it(
        store: str, pg_schema: str, flaky: StampedFake, tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.start()
    receiver.stop()  # down at first: its port refuses connections
    policy = _policy(tmp_path, store, pg_schema, flaky, receiver.url + "/hook")
    env = {"SECRET": SECRET}
    first = GatewayProcess(policy, env=env, tmp=tmp_path).start()
    try:
        with pytest.raises(openai.APIStatusError):  # one failure opens the circuit
            sdk(first.base_url, "unused").chat.completions.create(model="chat", messages=MSG)
        # Accepted and tried against the dead receiver, at least once, then killed outright.
        rows = poll(lambda: [r for r in _outbox(store, tmp_path, pg_schema) if r[2] >= 1],
                    15.0, what="a failed attempt in the outbox")
        assert rows[0][1] == "retrying"
    finally:
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait(10)
    receiver.start()  # back, on the same port
    try:
        # Two replicas come up after it; each looks for deliveries whose owner stopped renewing.
        with GatewayProcess(policy, env=env, tmp=tmp_path) as b, \
                GatewayProcess(policy, env=env, tmp=tmp_path) as c:
            poll(lambda: receiver.delivered("circuit_open"), 20.0, what="the resumed delivery")
            poll(lambda: all(r[1] == "delivered" for r in _outbox(store, tmp_path, pg_schema)),
                 10.0, what="the outbox row marked delivered")
            # The log outlived the process that wrote it, on both replicas.
            for gw in (b, c):
                log = admin("GET", gw.url, "/admin/alerts/deliveries").json()["data"]
                entry = poll(lambda gw=gw: [d for d in admin(
                    "GET", gw.url, "/admin/alerts/deliveries").json()["data"]
                    if d["status"] == "delivered"], 10.0, what="the log entry")[0]
                assert entry["event"] == "circuit_open" and entry["attempts"] >= 2
                assert entry["webhook"] == "oncall" and len(log) == 1
        delivered = receiver.delivered("circuit_open")
        assert len(delivered) == 1, "delivered by more than one replica"
        assert delivered[0].signed and "flaky-m" in str(delivered[0].body)
        assert len(_outbox(store, tmp_path, pg_schema)) == 1
    finally:
        receiver.stop()
