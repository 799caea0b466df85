"""GpuLifetimes records when each GPU deployment is in force, in SQLite and PostgreSQL: periods
open at start-up and reload, heartbeats extend them, drains, removals, price changes and
shutdown close them, a crash leaves the last heartbeat."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.accounting.gpu_billing import cost_of
from gateway.accounting.gpu_lifetimes import GpuLifetimes
from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_sqlite import path_of
from gateway.accounting.reports import run_report
from gateway.policy.models import Policy
from tests.harness import ROOT
from tests.unit.accounting import factories

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema

Target = tuple[str, "str | None"]
US = timedelta(microseconds=1)


def policy(target: Target, **deployments: dict[str, Any]) -> Policy:
    """One model per deployment name (its provider), GPU-priced unless told otherwise."""
    url, schema = target
    return Policy.model_validate({
        "ledger": {"url": url, "schema": schema},
        "providers": {n: {"kind": "vllm", "base_url": f"http://{n}/v1"} for n in deployments},
        "models": {n: {"deployments": [{"provider": n, "model": "llama",
                                        "gpu_cost_per_hour": "2", **d}]}
                   for n, d in deployments.items()},
    })


def rows(target: Target) -> list[dict[str, Any]]:
    """gpu_periods straight from the database, oldest first."""
    url, schema = target
    q = ("SELECT deployment, cost_per_hour, since, started, ended, replica FROM gpu_periods "
         "ORDER BY started, deployment")
    names = ("deployment", "rate", "since", "started", "ended", "replica")
    if url.startswith("sqlite"):
        with sqlite3.connect(path_of(url)) as c:
            try:
                raw = c.execute(q).fetchall()
            except sqlite3.OperationalError:
                return []
        conv = [str, Decimal, lambda v: v and datetime.fromisoformat(v),
                datetime.fromisoformat, datetime.fromisoformat, str]
        return [{n: f(v) for n, f, v in zip(names, conv, r, strict=True)} for r in raw]
    with psycopg.connect(url) as c:
        c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema or "")))
        if c.execute("SELECT to_regclass('gpu_periods')").fetchone() == (None,):
            return []
        return [dict(zip(names, r, strict=True)) for r in c.execute(q).fetchall()]


def ledger_exists(target: Target) -> None:
    """The ledger database exists (the gateway's writer creates it before any report)."""
    ledger = open_ledger(*target)
    ledger.connect()
    ledger.close()


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_heartbeat_extends_and_reload_closes_drained_and_removed(
    ledger_target: Target,
) -> None:
    ledger_exists(ledger_target)
    lt = GpuLifetimes.from_policy(policy(ledger_target, a={}, b={}, c={"weight": 0}),
                                  heartbeat_s=0.02)
    await lt.start()
    await until(lambda: len(rows(ledger_target)) == 2)
    assert {r["deployment"] for r in rows(ledger_target)} == {"a/llama", "b/llama"}  # c drained
    # Heartbeats move `ended` forward while the deployments stay in force.
    await until(lambda: all(r["ended"] > r["started"] for r in rows(ledger_target)))

    lt.update(policy(ledger_target, a={"weight": 0}, b={}))  # drain a
    await until(lambda: "a/llama" not in lt.open_periods)
    await lt.flush()
    [a] = [r for r in rows(ledger_target) if r["deployment"] == "a/llama"]
    writes = lt.writes
    await until(lambda: lt.writes >= writes + 3)  # b keeps beating…
    [a2] = [r for r in rows(ledger_target) if r["deployment"] == "a/llama"]
    assert a2["ended"] == a["ended"]  # …a stays closed
    b = next(r for r in rows(ledger_target) if r["deployment"] == "b/llama")
    assert b["ended"] > a["ended"]

    lt.update(policy(ledger_target, a={}))  # b removed, a back: a new period for a
    await lt.close()
    got = rows(ledger_target)
    assert [r["deployment"] for r in got] == ["a/llama", "b/llama", "a/llama"]
    assert got[2]["started"] > got[0]["ended"]  # the drained gap is not covered
    assert lt.open_periods == {} and lt.failures == 0
    assert len({r["replica"] for r in got}) == 1


@pytest.mark.asyncio
async def test_a_price_change_closes_one_period_and_opens_the_next_at_the_same_instant(
    ledger_target: Target,
) -> None:
    ledger_exists(ledger_target)
    since = "2026-03-01T08:00:00Z"
    lt = GpuLifetimes.from_policy(policy(ledger_target, a={"gpu_since": since}))
    await lt.start()
    lt.update(policy(ledger_target, a={"gpu_cost_per_hour": "2.5", "gpu_since": since}))
    lt.update(policy(ledger_target, a={"gpu_cost_per_hour": "2.5", "gpu_since": since}))
    await lt.close()
    old, new = rows(ledger_target)
    assert (old["rate"], new["rate"]) == (Decimal(2), Decimal("2.5"))
    assert old["ended"] == new["started"]
    assert old["since"] == new["since"] == datetime(2026, 3, 1, 8, tzinfo=UTC)


CRASHING = """
import asyncio, sys
from gateway.accounting.gpu_lifetimes import GpuLifetimes
from gateway.accounting.ledger import open_ledger
from gateway.policy.models import Policy

async def main():
    p = Policy.model_validate({{
        "ledger": {{"url": {url!r}, "schema": {schema!r}}},
        "providers": {{"a": {{"kind": "vllm", "base_url": "http://a/v1"}}}},
        "models": {{"a": {{"deployments": [
            {{"provider": "a", "model": "llama", "gpu_cost_per_hour": "3.6"}}]}}}}}})
    lt = GpuLifetimes.from_policy(p, heartbeat_s=0.02)
    await lt.start()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_crashed_gateway_is_billed_to_its_last_heartbeat(ledger_target: Target) -> None:
    ledger_exists(ledger_target)
    url, schema = ledger_target
    proc = subprocess.Popen([sys.executable, "-c", CRASHING.format(url=url, schema=schema)],
                            cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not (got := rows(ledger_target)) or got[0]["ended"] - got[0]["started"] < \
                timedelta(milliseconds=100):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no shutdown, no last write
        proc.wait()
    [row] = rows(ledger_target)
    billed = (row["ended"] - row["started"]) // US
    day = row["started"].astimezone(UTC).date()
    r = run_report(url, day, day + timedelta(days=1), schema=schema)
    [g] = r.gpu
    assert g.cost_usd == cost_of(Decimal("3.6"), billed) and g.cost_usd > 0


@pytest.mark.asyncio
async def test_a_database_that_is_down_delays_nothing_and_is_retried(tmp_path: Any) -> None:
    target = (factories.DEAD_PG_URL, None)
    lt = GpuLifetimes.from_policy(policy(target, a={}), heartbeat_s=0.02)
    await lt.start()
    await until(lambda: lt.failures >= 2)  # each heartbeat tries again
    lt.update(policy(target))  # a reload does not wait for the database
    await lt.close()
    assert lt.writes == 0


def test_reports_on_a_ledger_without_the_table_bill_no_gpu(ledger_target: Target) -> None:
    ledger_exists(ledger_target)
    url, schema = ledger_target
    assert run_report(url, date(2026, 1, 1), date(2026, 1, 2), schema=schema).gpu == []
