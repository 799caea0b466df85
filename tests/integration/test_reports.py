"""Usage reports from the rollups: exact reconciliation with the ledger, formats, GPU rows
billed from the recorded deployment lifetimes."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.gpu_billing import GpuPeriod
from gateway.accounting.gpu_periods import open_period_store
from gateway.accounting.ledger import LedgerUnavailable, open_ledger
from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.records import RequestRecord
from gateway.accounting.reports import (
    UNALLOCATED,
    parse_group_by,
    render,
    run_report,
)
from gateway.policy.models import Policy
from tests.unit.accounting import factories
from tests.unit.accounting.factories import make_records, raw_sums

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema

Target = tuple[str, "str | None"]
FROM, TO = date(2026, 1, 30), date(2026, 2, 2)  # the factories' four days
LATER = datetime(2027, 1, 1, tzinfo=UTC)
BEGIN = datetime(2026, 1, 30, tzinfo=UTC)
RATE = Decimal("3.5")
POLICY = Policy.model_validate({
    "providers": {n: {"kind": "openai-compatible", "base_url": f"http://{n}/v1"}
                  for n in ("oa", "az", "gpu")},
    "models": {
        "gpt": {"deployments": [{"provider": "oa", "model": "gpt-4o"},
                                {"provider": "az", "model": "gpt-4o"}]},
        "llama": {"deployments": [{"provider": "gpu", "model": "llama",
                                   "gpu_cost_per_hour": "3.5"}]},
    },
})


def gpu(start: datetime, end: datetime, dep: str = "gpu/llama", rate: Decimal = RATE,
        since: datetime | None = None, pid: str = "") -> GpuPeriod:
    return GpuPeriod(dep, "gpu", rate, start, end, since, pid or f"{dep}-{start.isoformat()}",
                     "test")


def record_periods(target: Target, *periods: GpuPeriod) -> None:
    store = open_period_store(*target)
    store.write(periods)
    store.close()


@pytest.fixture
def filled(ledger_target: Target) -> tuple[Target, list[RequestRecord]]:
    records = make_records(2000, seed=51)
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    ledger.write(records)
    ledger.close()
    # gpu/llama in force over the four days, as two replicas saw it (overlapping).
    record_periods(ledger_target, gpu(BEGIN - timedelta(hours=3), BEGIN + timedelta(days=3)),
                   gpu(BEGIN + timedelta(days=2), BEGIN + timedelta(days=5)))
    return ledger_target, records


def report(target: Target, **kw: Any) -> Any:
    kw.setdefault("now", LATER)
    return run_report(target[0], FROM, TO, schema=target[1], **kw)


@pytest.mark.parametrize("group_by", [
    ("tenant", "model"), ("provider",), ("day", "tenant", "deployment"), (),
])
def test_report_totals_equal_a_direct_sum_over_the_ledger(
    filled: tuple[Target, list[RequestRecord]], group_by: tuple[str, ...]
) -> None:
    target, records = filled
    r = report(target, group_by=group_by)
    raw = raw_sums(target)
    assert r.totals.requests == raw["requests"] == len(records)
    assert r.totals.cost_usd == raw["request_cost"] == raw["attempt_cost"]
    assert r.totals.cost_usd == sum((x.cost_usd for x in records), Decimal(0))
    for b in BUCKETS:
        assert getattr(r.totals, b) == raw[b]
    # the rows partition the totals exactly, whatever the grouping
    assert sum(x.requests for x in r.rows) == r.totals.requests
    assert sum((x.cost_usd for x in r.rows), Decimal(0)) == r.totals.cost_usd
    for b in BUCKETS:
        assert sum(getattr(x, b) for x in r.rows) == getattr(r.totals, b)


def test_tenant_filter(filled: tuple[Target, list[RequestRecord]]) -> None:
    target, records = filled
    r = report(target, tenant="beta", group_by=("model",), policy=POLICY)
    mine = [x for x in records if x.tenant == "beta"]
    assert r.totals.requests == len(mine)
    assert r.totals.cost_usd == sum((x.cost_usd for x in mine), Decimal(0))
    assert r.gpu and all(g.tenant == "beta" for g in r.gpu)


def test_gpu_hours_are_allocated_by_tokens_and_sum_exactly(
    filled: tuple[Target, list[RequestRecord]],
) -> None:
    target, records = filled
    r = report(target, policy=POLICY)
    assert [g.deployment for g in r.gpu] == ["gpu/llama"] * len(r.gpu)
    assert r.gpu_hours == 96  # four whole days, the replicas' overlap counted once
    assert r.gpu_cost_usd == Decimal("3.5") * 96
    tokens: dict[str, int] = {}
    for rec in records:
        for a in rec.attempts:
            if a.deployment == "gpu/llama" and a.usage:
                tokens[rec.tenant] = tokens.get(rec.tenant, 0) + a.usage.total
    assert {g.tenant: g.tokens for g in r.gpu} == tokens
    whole = sum(tokens.values())
    for g in r.gpu:  # within one quantum of the exact proportional share
        assert abs(g.cost_usd - Decimal(336) * g.tokens / whole) <= Decimal("1E-9")
        assert abs(g.hours - Decimal(96) * g.tokens / whole) <= Decimal("1E-9")
        assert g.rate_per_hour == RATE
    assert r.total_cost_usd == r.totals.cost_usd + Decimal(336)


def empty_ledger(target: Target) -> None:
    ledger = open_ledger(*target)
    ledger.connect()
    ledger.close()


def test_gpu_hours_stop_at_now_and_idle_hours_are_unallocated(ledger_target: Target) -> None:
    empty_ledger(ledger_target)
    record_periods(ledger_target, gpu(BEGIN - timedelta(days=1), BEGIN + timedelta(days=9)))
    url, schema = ledger_target
    r = run_report(url, FROM, TO, schema=schema, now=BEGIN + timedelta(hours=5, minutes=59))
    assert [(g.tenant, g.hours, g.cost_usd) for g in r.gpu] == [
        (UNALLOCATED, Decimal("5.983333"), Decimal("20.941666667"))]
    assert run_report(url, FROM, TO, schema=schema, now=BEGIN - timedelta(days=1)).gpu == []
    r = run_report(url, FROM, FROM, schema=schema, now=LATER)
    assert [(g.tenant, g.cost_usd) for g in r.gpu] == [(UNALLOCATED, Decimal("84.0"))]


def test_gpu_bills_only_recorded_lifetimes_even_of_removed_deployments(
    ledger_target: Target,
) -> None:
    """A deployment added at 13:53 and removed at 13:58, one drained at noon and one no
    longer in the policy at all: each billed for the time it was in force, nothing more."""
    empty_ledger(ledger_target)
    day = BEGIN + timedelta(days=1)
    record_periods(
        ledger_target,
        gpu(day + timedelta(hours=13, minutes=53), day + timedelta(hours=13, minutes=58),
            dep="gpu-b/llama", rate=Decimal(3)),
        gpu(day - timedelta(hours=6), day + timedelta(hours=12), dep="gpu-a/llama"),
        gpu(day, day + timedelta(hours=2), dep="retired/llama", rate=Decimal(1)),
    )
    url, schema = ledger_target
    r = run_report(url, day.date(), day.date(), schema=schema, now=LATER)  # no policy needed
    got = {g.deployment: (g.hours, g.cost_usd) for g in r.gpu}
    assert got == {"gpu-a/llama": (Decimal(12), Decimal(42)),
                   "gpu-b/llama": (Decimal("0.083333"), Decimal("0.25")),
                   "retired/llama": (Decimal(2), Decimal(2))}
    # The total row counts every deployment's hours (was: one deployment's).
    [total] = [x for x in csv.DictReader(io.StringIO(render(r, "csv"))) if x["kind"] == "total"]
    assert Decimal(total["gpu_hours"]) == r.gpu_hours == Decimal("14.083333")
    assert Decimal(total["cost_usd"]) == Decimal("44.25")


def test_gpu_since_bills_from_provisioning_to_the_first_period(ledger_target: Target) -> None:
    empty_ledger(ledger_target)
    since = BEGIN + timedelta(hours=6)
    first = gpu(BEGIN + timedelta(hours=9), BEGIN + timedelta(hours=10), since=since)
    # A later period (a restart after a gap) carries gpu_since too: only the time before the
    # first recorded period is added, the gap stays unbilled.
    later = gpu(BEGIN + timedelta(hours=12), BEGIN + timedelta(hours=13), since=since)
    record_periods(ledger_target, later, first)
    url, schema = ledger_target
    r = run_report(url, FROM, FROM, schema=schema, now=LATER)
    assert r.gpu_hours == 5  # 06–10 and 12–13
    # Capped at now like any period: 06–08.
    r = run_report(url, FROM, FROM, schema=schema, now=BEGIN + timedelta(hours=8))
    assert r.gpu_hours == 2


def test_csv_has_a_header_iso_dates_and_plain_decimal_costs(
    filled: tuple[Target, list[RequestRecord]],
) -> None:
    target, _ = filled
    r = report(target, group_by=("day", "tenant"), policy=POLICY)
    text = render(r, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].startswith("kind,day,tenant,deployment,requests,")
    usage = [x for x in rows if x["kind"] == "usage"]
    assert {x["day"] for x in usage} == {"2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"}
    for x in rows:
        assert "E" not in x["cost_usd"] and "e" not in x["cost_usd"]
        Decimal(x["cost_usd"])
    [total] = [x for x in rows if x["kind"] == "total"]
    parts = sum((Decimal(x["cost_usd"]) for x in rows if x["kind"] != "total"), Decimal(0))
    assert Decimal(total["cost_usd"]) == parts == r.total_cost_usd
    assert int(total["requests"]) == sum(int(x["requests"]) for x in usage)
    gpu_rows = [x for x in rows if x["kind"] == "gpu"]
    assert {x["deployment"] for x in gpu_rows} == {"gpu/llama"}
    assert {x["gpu_rate_per_hour"] for x in gpu_rows} == {"3.5"}
    assert sum(Decimal(x["gpu_hours"]) for x in gpu_rows) == Decimal(total["gpu_hours"]) == 96


def test_json_and_table(filled: tuple[Target, list[RequestRecord]]) -> None:
    target, _ = filled
    r = report(target, group_by=("tenant",), policy=POLICY)
    doc = json.loads(render(r, "json"))
    assert doc["from"] == "2026-01-30" and doc["to"] == "2026-02-02"
    assert isinstance(doc["totals"]["cost_usd"], str)
    assert Decimal(doc["totals"]["cost_usd"]) == r.total_cost_usd
    assert Decimal(doc["totals"]["gpu_cost_usd"]) == Decimal(336)
    assert doc["totals"]["gpu_hours"] == "96"
    assert sum(Decimal(g["cost_usd"]) for g in doc["gpu_allocation"]) == Decimal(336)
    assert sum(Decimal(g["hours"]) for g in doc["gpu_allocation"]) == Decimal(96)
    table = render(r, "table")
    lines = table.splitlines()
    assert lines[0].startswith("Usage 2026-01-30 .. 2026-02-02")
    assert lines[1].split()[:3] == ["kind", "tenant", "deployment"]
    assert lines[-1].split()[0] == "total"
    assert lines[-1].split()[-1] == str(r.total_cost_usd.normalize())


def test_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot group by 'region'"):
        parse_group_by("tenant,region")
    assert parse_group_by(" tenant , model,tenant") == ("tenant", "model")
    with pytest.raises(LedgerUnavailable, match="no ledger database"):
        run_report(f"sqlite:///{tmp_path}/typo.db", FROM, TO)
    assert not (tmp_path / "typo.db").exists()
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(url).connect()
    with pytest.raises(ValueError, match="before --from"):
        run_report(url, TO, FROM)
