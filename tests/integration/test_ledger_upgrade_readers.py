"""Read-only readers of a ledger from before `requests.route_reason` (the previous schema):
`gateway usage requests` is often the first upgraded program to open it, before any upgraded
gateway has; it adds the column as a gateway would and lists the old rows, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_sqlite import path_of
from gateway.cli import main
from tests.unit.accounting import factories
from tests.unit.accounting.factories import make_records

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema
Target = tuple[str, "str | None"]


def _columns(target: Target) -> set[str]:
    url, schema = target
    if url.startswith("sqlite"):
        with sqlite3.connect(path_of(url)) as c:
            return {row[1] for row in c.execute("PRAGMA table_info(requests)")}
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute("SELECT column_name FROM information_schema.columns "
                         "WHERE table_schema = %s AND table_name = 'requests'", (schema,))
        return {r[0] for r in rows}


def _previous_schema(target: Target) -> None:
    """The ledger as the gateway before `route_reason` left it: today's tables, that column
    dropped (rows written before keep every other column)."""
    url, schema = target
    drop = "ALTER TABLE requests DROP COLUMN route_reason"
    if url.startswith("sqlite"):
        with sqlite3.connect(path_of(url)) as c:
            c.execute(drop)
        return
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema or "")))
        c.execute(drop)


def test_usage_requests_lists_a_ledger_from_before_route_reason(
        ledger_target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = make_records(5, seed=7)
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    try:
        ledger.write(records)
    finally:
        ledger.close()
    _previous_schema(ledger_target)
    assert "route_reason" not in _columns(ledger_target)
    url, schema = ledger_target
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nledger:\n  url: {url}\n  schema: {schema or 'public'}\n")
    status = main(["usage", "requests", "--config", str(policy), "--from", "2000-01-01",
                   "--to", "2100-01-01", "--format", "json", "--limit", "50"])
    out, err = capsys.readouterr()
    assert status == 0, err
    doc = json.loads(out)
    assert {r["request_id"] for r in doc["data"]} == {r.request_id for r in records}
    assert "route_reason" in _columns(ledger_target)  # added, as a gateway would


def test_a_reader_adds_the_column_once_and_a_writer_then_fills_it(
        ledger_target: Target) -> None:
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    ledger.close()
    _previous_schema(ledger_target)
    for _ in range(2):  # the second reader finds the column there and changes nothing
        reader = open_ledger(*ledger_target, create=False)
        reader.connect()
        reader.close()
    assert "route_reason" in _columns(ledger_target)
    writer = open_ledger(*ledger_target)
    writer.connect()
    try:
        rec = make_records(1, seed=2)[0]
        rec.route_reason = "spill: test"
        writer.write([rec])
        [back] = writer.read_records(rec.ts.date(), rec.ts.date())
        assert back.route_reason == "spill: test"
    finally:
        writer.close()
