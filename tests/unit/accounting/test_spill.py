"""The spill file and the record ↔ JSON codec it uses."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from gateway.accounting.ledger_rows import from_json, rollup_deltas, to_json
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.spill import SpillFile
from gateway.accounting.usage import Usage


def rec(i: int, status: int = 200) -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{i}", ts=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        tenant="acme", key_id="k1", model="gpt", endpoint="chat", stream=True, status=status,
        latency_ms=12.5, ttft_ms=3.25, client_disconnected=True,
        attempts=[
            AttemptRecord("a/x", "a", "x", "error", 502, None, 4.0, error="bad gateway"),
            AttemptRecord("b/y", "b", "y", "ok", 200,
                          Usage(10, 2, 3, 4, 5, source="provider_partial"), 8.0,
                          streamed_chunks=4, cost_usd=Decimal("0.000000123456789")),
        ])


def test_json_round_trip_is_exact() -> None:
    r = rec(1)
    back = from_json(to_json(r))
    assert back.attempts[1].cost_usd == Decimal("0.000000123456789")
    assert back.attempts[1].usage == r.attempts[1].usage
    assert back.attempts[0].usage is None
    assert back.ts == r.ts
    assert to_json(back) == to_json(r)


def test_append_read_and_clear(tmp_path: Path) -> None:
    s = SpillFile(tmp_path / "sub" / "spill.jsonl")
    assert not s.pending()
    s.append([rec(i) for i in range(5)])
    s.append([rec(i) for i in range(5, 12)])
    assert s.count() == 12
    batches = list(s.batches(5))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert [r.request_id for b in batches for r in b] == [f"req-{i}" for i in range(12)]
    s.clear()
    assert not s.pending() and list(s.batches(5)) == []


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    s = SpillFile(tmp_path / "spill.jsonl")
    s.append([rec(1), rec(2)])
    with s.path.open("ab") as f:
        f.write(b'{"request_id": "req-3", "ts": "2026-')  # a crash mid-append
    got = [r.request_id for b in s.batches(10) for r in b]
    assert got == ["req-1", "req-2"]
    assert s.corrupt_lines == 1


def test_rollup_counts_a_request_once_on_its_last_attempt() -> None:
    deltas = dict(rollup_deltas([rec(1), rec(2, status=500)]))
    day = datetime(2026, 1, 2).date()
    first = deltas[(day, "acme", "gpt", "a/x", "a")]
    last = deltas[(day, "acme", "gpt", "b/y", "b")]
    assert (first.requests, first.attempts, first.cost_usd) == (0, 2, 0)
    assert (last.requests, last.errors, last.attempts) == (2, 1, 2)
    assert last.input_uncached == 20 and last.reasoning == 10
    assert last.cost_usd == Decimal("0.000000246913578")
    none = dict(rollup_deltas([RequestRecord("z", datetime(2026, 1, 2, tzinfo=UTC), "t", "k",
                                             "m", "chat", False, 429, 1.0)]))
    assert none[(day, "t", "m", "", "")].requests == 1
