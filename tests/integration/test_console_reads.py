"""The ledger reads behind the console's pages, on SQLite and PostgreSQL: cache savings from
the rollups (and their backfill when an older ledger is upgraded), exact money sums however
many decimals a cost has, keyset pages of the requests explorer, and each key's last use."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_sqlite import path_of
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.reports import reconcile, report_from_ledger
from gateway.accounting.request_list import RequestQuery, list_from_ledger, parse_cursor
from gateway.accounting.savings import savings_by_tenant
from gateway.accounting.usage import Usage
from gateway.console.status import last_used
from gateway.policy.models import Policy
from tests.unit.accounting import factories
from tests.unit.accounting.factories import make_records

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema
Target = tuple[str, "str | None"]
ALL = (date(2000, 1, 1), date(2100, 1, 1))


def hits(records: list[RequestRecord], n: int) -> list[RequestRecord]:
    """Response-cache answers beside the first `n` records, each saving a distinct amount."""
    out = []
    for i, r in enumerate(records[:n]):
        h = RequestRecord(f"hit-{i}", r.ts, r.tenant, r.key_id, r.model, "chat", False, 200,
                          1.0, None)
        h.attempts.append(AttemptRecord("oa/gpt-4o", "cache", "gpt-4o", "cache_hit", 200,
                                        Usage(10, 0, 0, 5, 0), 0.1))
        h.saved_usd = Decimal("0.0001234") * (i + 1)
        out.append(h)
    return out


def _sql(target: Target, *statements: str) -> None:
    url, schema = target
    if url.startswith("sqlite"):
        with sqlite3.connect(path_of(url)) as c:
            for s in statements:
                c.execute(s)
        return
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema or "")))
        for s in statements:
            c.execute(s)  # type: ignore[call-overload]


def test_savings_come_from_the_rollups_and_an_older_ledger_is_backfilled_exactly(
        ledger_target: Target) -> None:
    records = make_records(200)
    cached = hits(records, 15)
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    ledger.write(records + cached)
    want = sum((h.saved_usd for h in cached), Decimal(0))
    got = savings_by_tenant(ledger, *ALL)
    assert sum(s.hits for s in got.values()) == 15
    assert sum((s.saved_usd for s in got.values()), Decimal(0)) == want
    ledger.close()
    # A ledger from before the columns: they are added and filled on the next open — by a
    # reader too — from the requests and attempts, equal to what the writes had kept.
    _sql(ledger_target, "ALTER TABLE rollups_daily DROP COLUMN cache_hits",
         "ALTER TABLE rollups_daily DROP COLUMN saved_usd")
    reader = open_ledger(*ledger_target, create=False)
    reader.connect()
    try:
        assert savings_by_tenant(reader, *ALL) == got
        assert reconcile(reader, *ALL) == []
        report = report_from_ledger(reader, *ALL, group_by=("model",))  # no tenant column
        assert report.savings == got and report.saved_usd == want
        by_tenant = report_from_ledger(reader, *ALL, group_by=("tenant", "day"))
        assert by_tenant.savings == got and by_tenant.totals == report.totals
    finally:
        reader.close()


def test_money_sums_are_exact_with_many_decimals_and_negative_amounts(
        ledger_target: Target) -> None:
    records = make_records(50)
    # A refund-like negative cost and one with 20 decimals: past the fast path's bounds.
    records[0].attempts[0].cost_usd = Decimal("-0.25")
    records[1].attempts[0].cost_usd = Decimal("0.00000000000000000007")
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    try:
        ledger.write(records)
        want = sum((a.cost_usd for r in records for a in r.attempts), Decimal(0))
        [total] = ledger.rollup_totals(*ALL, None, ())
        assert total["cost_usd"] == want
        assert reconcile(ledger, *ALL) == []
        records[1].attempts[0].cost_usd = Decimal("0.1")  # back inside: the fast path again
        ledger.update_costs(records[:2])
        [total] = ledger.rollup_totals(*ALL, None, ())
        assert total["cost_usd"] == sum((a.cost_usd for r in records for a in r.attempts),
                                        Decimal(0))
    finally:
        ledger.close()


def test_the_requests_explorer_pages_by_keyset_without_gaps_or_repeats(
        ledger_target: Target) -> None:
    records = make_records(120)
    # Two requests in one microsecond: the id orders them, and a page may split them.
    twin = dataclasses.replace(records[0], request_id="req-twin", attempts=[])
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    try:
        ledger.write([*records, twin])
        for q in (RequestQuery(*ALL, limit=7), RequestQuery(*ALL, tenant="acme", limit=5),
                  RequestQuery(*ALL, status="error", limit=2)):
            seen: list[str] = []
            while True:
                page = list_from_ledger(ledger, q)
                seen += [r.request_id for r in page.requests]
                if page.next_cursor is None:
                    break
                q = dataclasses.replace(q, before=parse_cursor(page.next_cursor))
            whole = list_from_ledger(ledger, dataclasses.replace(q, before=None, limit=1000))
            assert seen == [r.request_id for r in whole.requests] and len(set(seen)) == len(seen)
        assert len(list_from_ledger(ledger, RequestQuery(*ALL, limit=1000)).requests) == 121
    finally:
        ledger.close()


def test_each_keys_last_use_in_one_statement(ledger_target: Target) -> None:
    url, schema = ledger_target
    records = make_records(60)
    ledger = open_ledger(url, schema)
    ledger.connect()
    ledger.write(records)
    ledger.close()
    policy = Policy.model_validate({"ledger": {"url": url, "schema": schema}})
    ids = ["k-acme", "k-beta", "k-gamma", "k-none"] + [f"k-{i}" for i in range(600)]
    got = last_used(policy, ids)
    want: dict[str, datetime] = {}
    for r in records:
        want[r.key_id] = max(want.get(r.key_id, r.ts), r.ts)
    assert got == want  # a key with no request has no entry; 604 keys span two statements


def test_a_day_bound_keeps_the_last_microsecond_of_the_day(ledger_target: Target) -> None:
    day = date(2026, 3, 1)
    edge = datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    recs = [RequestRecord(f"edge-{i}", ts, "acme", "k", "m", "chat", False, 200, 1.0, None)
            for i, ts in enumerate([edge, edge + timedelta(microseconds=1),
                                    datetime(2026, 3, 1, tzinfo=UTC)])]
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    try:
        ledger.write(recs)
        listed: Any = list_from_ledger(ledger, RequestQuery(day, day)).requests
        assert [r.request_id for r in listed] == ["edge-0", "edge-2"]
    finally:
        ledger.close()
