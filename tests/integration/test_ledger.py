"""The ledger on real SQLite files and a real PostgreSQL schema: one suite, both backends."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.accounting.ledger import Ledger, open_ledger
from gateway.accounting.ledger_rows import BUCKETS, to_json
from gateway.accounting.pricing import PriceBook, Rates, reprice
from gateway.accounting.records import RequestRecord
from gateway.accounting.reports import reconcile
from gateway.accounting.usage import Usage
from gateway.accounting.writer import LedgerWriter
from tests.unit.accounting import factories
from tests.unit.accounting.factories import make_records, raw_sums

# Fixtures shared with the other accounting suites.
ledger_target = factories.ledger_target
pg_schema = factories.pg_schema

Target = tuple[str, "str | None"]
DAYS = (date(2026, 1, 1), date(2026, 12, 31))


def opened(target: Target) -> Ledger:
    ledger = open_ledger(target[0], target[1])
    ledger.connect()
    return ledger


def truth(records: list[RequestRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(records),
                           "cost_usd": sum((r.cost_usd for r in records), Decimal(0)),
                           "attempts": sum(len(r.attempts) for r in records)}
    for b in BUCKETS:
        out[b] = sum(getattr(a.usage, b) for r in records for a in r.attempts if a.usage)
    return out


def rollup_total(ledger: Ledger) -> dict[str, Any]:
    [t] = ledger.rollup_totals(*DAYS, None, ())
    return t


def test_rollups_equal_direct_sums_and_the_records(ledger_target: Target) -> None:
    records = make_records(1500, seed=3)
    ledger = opened(ledger_target)
    for i in range(0, len(records), 400):
        assert ledger.write(records[i : i + 400]) == len(records[i : i + 400])
    expected = truth(records)
    t = rollup_total(ledger)
    assert {k: t[k] for k in expected} == expected
    raw = raw_sums(ledger_target)
    assert raw["requests"] == t["requests"]
    assert raw["request_cost"] == raw["attempt_cost"] == t["cost_usd"]
    assert all(raw[b] == t[b] for b in BUCKETS)
    assert reconcile(ledger, *DAYS) == []
    assert reconcile(ledger, *DAYS, tenant="acme", group_by=("model", "day")) == []
    ledger.close()


def test_writing_a_record_twice_never_counts_it_twice(ledger_target: Target) -> None:
    records = make_records(300, seed=5)
    ledger = opened(ledger_target)
    assert ledger.write(records[:200]) == 200
    before = rollup_total(ledger)
    assert ledger.write(records[:200]) == 0
    assert rollup_total(ledger) == before
    # a batch mixing old, new, and the same new record twice
    assert ledger.write(records[150:] + records[250:260]) == 100
    t = rollup_total(ledger)
    assert t["requests"] == 300 and t["cost_usd"] == truth(records)["cost_usd"]
    assert reconcile(ledger, *DAYS) == []
    ledger.close()


def test_read_records_round_trips_exactly(ledger_target: Target) -> None:
    records = make_records(120, seed=9)
    ledger = opened(ledger_target)
    ledger.write(records)
    back = {r.request_id: r for r in ledger.read_records(*DAYS)}
    assert len(back) == 120
    for r in records:
        assert to_json(back[r.request_id]) == to_json(r)
    only = list(ledger.read_records(*DAYS, tenant="beta"))
    assert only and all(r.tenant == "beta" for r in only)
    ledger.close()


def test_repricing_rewrites_costs_and_rollups(ledger_target: Target) -> None:
    records = make_records(400, seed=11)
    ledger = opened(ledger_target)
    ledger.write(records)
    flat = Rates(*(Decimal(1),) * 5)
    new_book = PriceBook.from_rates({"oa/gpt-4o": [flat], "az/gpt-4o": [flat],
                                     "gpu/llama": [flat]})
    repriced = reprice(ledger.read_records(*DAYS), new_book)
    ledger.update_costs(repriced)
    tokens = sum(a.usage.total for r in records for a in r.attempts if a.usage)
    assert rollup_total(ledger)["cost_usd"] == Decimal(tokens).scaleb(-6)
    assert raw_sums(ledger_target)["request_cost"] == Decimal(tokens).scaleb(-6)
    assert reconcile(ledger, *DAYS) == []
    ledger.close()


def test_rebuilt_rollups_equal_the_incremental_ones(ledger_target: Target) -> None:
    ledger = opened(ledger_target)
    ledger.write(make_records(500, seed=13))
    groups = ("day", "tenant", "model", "deployment", "provider")
    incremental = ledger.rollup_totals(*DAYS, None, groups)
    ledger.rebuild_rollups(*DAYS)
    assert ledger.rollup_totals(*DAYS, None, groups) == incremental
    ledger.close()


def test_writer_flushes_everything_on_close(ledger_target: Target, tmp_path: Path) -> None:
    records = make_records(700, seed=17)
    # Neither the batch size nor the interval would flush these before close().
    w = LedgerWriter(open_ledger(*ledger_target), tmp_path / "spill.jsonl",
                     batch_size=100_000, flush_interval_s=60)
    w.start()
    for r in records:
        w.record(r)
    w.close()
    assert w.stats.written == 700 and w.stats.spilled == 0
    ledger = opened(ledger_target)
    assert rollup_total(ledger)["requests"] == 700
    ledger.close()


def test_writer_batches_and_ignores_repeats(ledger_target: Target, tmp_path: Path) -> None:
    records = make_records(250, seed=19)
    w = LedgerWriter(open_ledger(*ledger_target), tmp_path / "spill.jsonl", batch_size=50,
                     flush_interval_s=0.05)
    w.start()
    for r in records + records[:30]:
        w.record(r)
    assert w.flush(30)
    assert w.stats.written == 250 and w.stats.duplicates == 30 and w.stats.batches >= 5
    w.close()


def test_a_record_the_database_refuses_is_set_aside(ledger_target: Target,
                                                    tmp_path: Path) -> None:
    records = make_records(40, seed=23)
    bad = make_records(1, seed=24, prefix="bad")[0]
    # 2**70 tokens fit neither SQLite's INTEGER nor PostgreSQL's bigint.
    bad.attempts = [replace(records[0].attempts[-1], usage=Usage(input_uncached=2**70))]
    w = LedgerWriter(open_ledger(*ledger_target), tmp_path / "spill.jsonl")
    w.start()
    for r in [*records[:20], bad, *records[20:]]:
        w.record(r)
    w.close()
    assert w.stats.written == 40 and w.stats.rejected == 1
    rejected = (tmp_path / "spill.jsonl.rejected").read_text().splitlines()
    assert len(rejected) == 1 and '"bad-24-0"' in rejected[0]
    ledger = opened(ledger_target)
    assert rollup_total(ledger)["requests"] == 40
    ledger.close()
