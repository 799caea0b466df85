"""The spill reason (`requests.route_reason`) in the ledger, SQLite and PostgreSQL alike: it
round-trips through the journal's JSON and the database, and a ledger created before the
column existed gets it added when a gateway connects."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import date
from pathlib import Path

from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_rows import from_json, to_json
from gateway.accounting.request_list import RequestQuery, list_from_ledger
from tests.unit.accounting import factories
from tests.unit.accounting.factories import make_records

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema

REASON = "spill: predicted TTFT 4000 ms on gpu-a > 800 ms; mini $0.41/M tokens"
DAYS = (date(2026, 1, 1), date(2026, 12, 31))


def test_the_reason_round_trips_through_json_and_the_database(ledger_target) -> None:
    records = make_records(6, seed=3)
    records[2] = replace(records[2], route_reason=REASON)
    assert from_json(to_json(records[2])).route_reason == REASON
    assert "route_reason" not in to_json(records[0])  # other lines stay as they were
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    try:
        ledger.write(records)
        back = {r.request_id: r for r in ledger.read_records(*DAYS)}
        assert back[records[2].request_id].route_reason == REASON
        assert back[records[0].request_id].route_reason is None
        listed = list_from_ledger(ledger, RequestQuery(start=DAYS[0], end=DAYS[1]))
        reasons = {r.request_id: r.route_reason for r in listed.requests}
        assert reasons[records[2].request_id] == REASON
    finally:
        ledger.close()


def test_an_older_sqlite_ledger_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ledger = open_ledger(f"sqlite:///{path}")
    ledger.connect()
    ledger.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE requests DROP COLUMN route_reason")
    ledger = open_ledger(f"sqlite:///{path}")
    ledger.connect()
    try:
        rec = replace(make_records(1, seed=1)[0], route_reason=REASON)
        ledger.write([rec])
        assert next(iter(ledger.read_records(*DAYS))).route_reason == REASON
    finally:
        ledger.close()
