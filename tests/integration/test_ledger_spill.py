"""Spill and replay: a database that is down loses nothing and counts nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_postgres import PostgresLedger
from gateway.accounting.reports import reconcile
from gateway.accounting.spill import SpillFile
from gateway.accounting.writer import LedgerWriter
from tests.unit.accounting import factories
from tests.unit.accounting.factories import DEAD_PG_URL, PG_URL, TcpProxy, make_records

# Fixtures shared with the other accounting suites.
pg_schema = factories.pg_schema

DAYS = (date(2026, 1, 1), date(2026, 12, 31))


def stored(url: str, schema: str | None) -> tuple[int, object]:
    ledger = open_ledger(url, schema)
    ledger.connect()
    try:
        [t] = ledger.rollup_totals(*DAYS, None, ())
        assert reconcile(ledger, *DAYS) == []
        ids = {r.request_id for r in ledger.read_records(*DAYS)}
        assert len(ids) == t["requests"]
        return t["requests"], t["cost_usd"]
    finally:
        ledger.close()


def test_spill_when_postgres_is_down_then_replay_exactly_once(
    pg_schema: str, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    records = make_records(600, seed=31)
    down = LedgerWriter(PostgresLedger(DEAD_PG_URL, schema=pg_schema, connect_timeout_s=1),
                        spill, batch_size=100, flush_interval_s=0.05)
    down.start()
    for r in records:
        down.record(r)
    down.close()
    assert down.stats.spilled == 600 and down.stats.written == 0 and down.stats.lost == 0
    assert SpillFile(spill).count() == 600

    # Part of it already reached the database (a replay cut short): still exactly 600 after.
    live = open_ledger(PG_URL, pg_schema)
    live.connect()
    live.write(records[:250])
    live.close()
    up = LedgerWriter(open_ledger(PG_URL, pg_schema), spill, batch_size=100)
    up.start()  # replays what the previous process spilled
    assert up.flush(30)
    assert not SpillFile(spill).pending()
    up.close()
    assert up.stats.replayed == 600 and up.stats.written == 350 and up.stats.duplicates == 250
    expected_cost = sum((r.cost_usd for r in records), start=records[0].cost_usd * 0)
    assert stored(PG_URL, pg_schema) == (600, expected_cost)

    # The same spill replayed again changes nothing.
    SpillFile(spill).append(records[:100])
    again = LedgerWriter(open_ledger(PG_URL, pg_schema), spill)
    again.start()
    again.close()
    assert again.stats.duplicates == 100
    assert stored(PG_URL, pg_schema) == (600, expected_cost)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy().up()
    yield p
    p.down()


def test_writer_rides_out_an_outage_and_catches_up(
    pg_schema: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    records = make_records(900, seed=37)
    w = LedgerWriter(PostgresLedger(proxy.url(), schema=pg_schema, connect_timeout_s=1), spill,
                     batch_size=64, flush_interval_s=0.02)
    w.start()
    for r in records[:300]:
        w.record(r)
    assert w.flush(30)
    assert w.stats.written == 300

    proxy.down()  # the database vanishes mid-run, connections cut
    for r in records[300:600]:
        w.record(r)
    assert w.flush(30)
    assert w.stats.spilled == 300 and SpillFile(spill).count() == 300

    proxy.up()  # back, same port
    for r in records[600:]:
        w.record(r)
    assert w.flush(30)  # an explicit flush tries the database at once, then replays
    w.close()
    assert w.stats.lost == 0 and not SpillFile(spill).pending()
    assert w.stats.written == 900
    assert stored(PG_URL, pg_schema)[0] == 900


def test_sqlite_that_cannot_be_opened_spills_then_replays(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger's directory should be")
    spill = tmp_path / "spill.jsonl"
    records = make_records(200, seed=41)
    w = LedgerWriter(open_ledger(f"sqlite:///{blocker}/ledger.db"), spill)
    w.start()
    for r in records:
        w.record(r)
    w.close()
    assert w.stats.spilled == 200
    good = f"sqlite:///{tmp_path}/ledger.db"
    w2 = LedgerWriter(open_ledger(good), spill)
    w2.start()
    w2.close()
    assert stored(good, None)[0] == 200 and not SpillFile(spill).pending()


def test_a_record_after_close_goes_to_the_spill_file(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    url = f"sqlite:///{tmp_path}/ledger.db"
    w = LedgerWriter(open_ledger(url), spill)
    w.start()
    a, b = make_records(2, seed=43)
    w.record(a)
    w.close()
    w.record(b)  # a request that finished during shutdown
    assert SpillFile(spill).count() == 1
    w2 = LedgerWriter(open_ledger(url), spill)
    w2.close()  # never started: close still replays and flushes inline
    assert stored(url, None)[0] == 2
