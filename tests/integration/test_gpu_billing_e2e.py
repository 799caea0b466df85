"""GPU-hour billing through the real gateway (SQLite and PostgreSQL): reloads add, drain,
un-drain and remove a GPU deployment, and `/admin/usage` and `gateway usage report` bill
exactly the time it was in force."""

from __future__ import annotations

import contextlib
import csv
import io
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import yaml

from gateway import cli
from gateway.accounting.gpu_billing import cost_of, hours_of
from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy
from tests.integration.test_gpu_lifetimes import rows
from tests.unit.accounting import factories

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema

Target = tuple[str, "str | None"]
ADMIN = "admin-secret"
RATE = Decimal("3.6")
US = timedelta(microseconds=1)
GPU = {"provider": "gpu", "model": "llama", "gpu_cost_per_hour": str(RATE)}


def reload(gw: Any, policy: dict[str, Any], cond: Any) -> None:
    time.sleep(0.01)  # a distinct mtime for the watcher
    gw.policy_path.write_text(yaml.safe_dump(policy))
    assert wait_until(cond, timeout=15), "reload not recorded"


def chat(gw: Any, model: str) -> None:
    r = httpx.post(gw.base_url + "/chat/completions", timeout=30,
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text


def days() -> tuple[str, str]:
    today = datetime.now(UTC).date()  # a run across midnight stays inside the range
    return (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()


def test_reloads_bill_a_gpu_deployment_only_while_it_is_in_force(
    ledger_target: Target, fakes: Any, gateway: Any, tmp_path: Any,
) -> None:
    url, schema = ledger_target
    a, gpu = fakes("a"), fakes("gpu")
    policy = simple_policy(tmp_path, {"a": provider(a), "gpu": provider(gpu)},
                           {"chat": {"deployments": [{"provider": "a", "model": "m"}]}},
                           server={"admin_key": ADMIN})
    policy["ledger"].update(url=url, schema=schema)
    t0 = datetime.now(UTC)
    gw = gateway(policy)

    # Added by a reload: a period opens; requests on it give the tenant its tokens.
    policy["models"]["llama"] = {"deployments": [dict(GPU)]}
    reload(gw, policy, lambda: len(rows(ledger_target)) == 1)
    for _ in range(3):
        chat(gw, "llama")
    # Drained (weight 0; another deployment serves the model meanwhile): the period closes.
    policy["models"]["llama"]["deployments"] = [{**GPU, "weight": 0},
                                                {"provider": "a", "model": "m"}]
    drained = datetime.now(UTC)
    reload(gw, policy, lambda: rows(ledger_target)[0]["ended"] >= drained)
    # Back in force, then removed: a second period, closed by the removal.
    policy["models"]["llama"]["deployments"] = [dict(GPU)]
    reload(gw, policy, lambda: len(rows(ledger_target)) == 2)
    chat(gw, "llama")
    del policy["models"]["llama"]
    removed = datetime.now(UTC)
    reload(gw, policy, lambda: rows(ledger_target)[1]["ended"] >= removed)
    chat(gw, "chat")
    first, second = rows(ledger_target)
    assert first["ended"] < second["started"]  # the drained time is not in force
    billed = sum((p["ended"] - p["started"]) // US for p in (first, second))
    assert 0 < billed < (datetime.now(UTC) - t0) // US

    start, end = days()
    doc = httpx.get(f"{gw.url}/admin/usage?from={start}&to={end}",
                    headers={"authorization": f"Bearer {ADMIN}"}).json()
    [g] = doc["gpu_allocation"]
    assert (g["deployment"], g["tenant"], g["rate_per_hour"]) == ("gpu/llama", "default", "3.6")
    assert g["tokens"] == sum(r[b] for r in doc["rows"] if r["model"] == "llama"
                              for b in ("input_uncached", "output")) > 0
    assert Decimal(g["hours"]) == hours_of(billed) == Decimal(doc["totals"]["gpu_hours"])
    assert Decimal(g["cost_usd"]) == cost_of(RATE, billed) == Decimal(doc["totals"]["gpu_cost_usd"])

    # `gateway usage report` reads the same ledger and bills the same.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["usage", "report", "--config", str(gw.policy_path), "--from", start,
                         "--to", end, "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    [row] = [r for r in table if r["kind"] == "gpu"]
    [total] = [r for r in table if r["kind"] == "total"]
    assert (row["gpu_hours"], row["cost_usd"]) == (g["hours"], g["cost_usd"])
    assert total["gpu_hours"] == g["hours"]
    assert Decimal(total["cost_usd"]) == sum(
        (Decimal(r["cost_usd"]) for r in table if r["kind"] != "total"), Decimal(0))
