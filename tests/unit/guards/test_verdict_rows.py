"""A record's guard verdicts survive every form the ledger keeps: rows and journal JSON."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.accounting.ledger_rows import (
    REQUEST_COLUMNS,
    from_json,
    record_from_rows,
    request_row,
    to_json,
)
from gateway.accounting.records import RequestRecord
from gateway.guards.verdicts import VerdictClock


def _record() -> RequestRecord:
    return RequestRecord(request_id="r1", ts=datetime.now(UTC), tenant="t", key_id="k",
                         model="m", endpoint="chat", stream=False, status=400,
                         latency_ms=1.0)


def test_verdicts_round_trip_through_rows_and_json() -> None:
    rec = _record()
    VerdictClock(rec, "cards", "input", "ext/gpt").done("block", ["card"])
    VerdictClock(rec, "keys", "input").done("pass")
    assert rec.guards is not None and [v["verdict"] for v in rec.guards] == ["block", "pass"]
    assert rec.guards[0]["deployment"] == "ext/gpt" and "deployment" not in rec.guards[1]
    row = dict(zip(REQUEST_COLUMNS, request_row(rec), strict=True))
    assert record_from_rows(row, []).guards == rec.guards
    assert from_json(to_json(rec)).guards == rec.guards


def test_a_record_without_guards_stores_null() -> None:
    rec = _record()
    row = dict(zip(REQUEST_COLUMNS, request_row(rec), strict=True))
    assert row["guards"] is None
    assert "guards" not in to_json(rec)
    assert record_from_rows(row, []).guards is None
