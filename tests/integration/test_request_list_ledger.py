"""The request listing read from a filled ledger, SQLite and PostgreSQL alike: every filter
picks exactly the records it should, newest first, with each attempt and exact sums."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from gateway.accounting.ledger import LedgerUnavailable, open_ledger
from gateway.accounting.ledger_rows import BUCKETS, day_of
from gateway.accounting.records import RequestRecord
from gateway.accounting.request_list import RequestQuery, run_listing
from tests.unit.accounting import factories
from tests.unit.accounting.factories import make_records

ledger_target = factories.ledger_target
pg_schema = factories.pg_schema

Target = tuple[str, "str | None"]
# The factories' records: four days from 2026-01-30, the last one at 2026-02-03 00:00 at most.
FROM, TO = date(2026, 1, 30), date(2026, 2, 3)


@pytest.fixture
def filled(ledger_target: Target) -> tuple[Target, list[RequestRecord]]:
    records = make_records(600, seed=17)
    for i, rec in enumerate(records):
        # Clients reuse ids: every seventh request shares one, some send none.
        rec.client_request_id = "batch-7" if i % 7 == 0 else (None if i % 3 else f"c-{i}")
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    ledger.write(records)
    ledger.close()
    return ledger_target, records


def expected(records: list[RequestRecord], q: RequestQuery,
             keep: Callable[[RequestRecord], bool]) -> list[str]:
    inside = [r for r in records if q.start <= day_of(r) <= q.end and keep(r)]
    return [r.request_id for r in sorted(inside, key=lambda r: r.ts, reverse=True)]


CASES: list[tuple[dict[str, Any], Callable[[RequestRecord], bool]]] = [
    ({}, lambda r: True),
    ({"tenant": "beta"}, lambda r: r.tenant == "beta"),
    ({"model": "llama"}, lambda r: r.model == "llama"),
    ({"status": "error"}, lambda r: r.status >= 400),
    ({"status": 429}, lambda r: r.status == 429),
    ({"key_id": "k-gamma"}, lambda r: r.key_id == "k-gamma"),
    ({"client_request_id": "batch-7"}, lambda r: r.client_request_id == "batch-7"),
    ({"tenant": "acme", "model": "gpt", "status": 200},
     lambda r: r.tenant == "acme" and r.model == "gpt" and r.status == 200),
    ({"start": date(2026, 2, 1), "end": date(2026, 2, 1)}, lambda r: True),
]


@pytest.mark.parametrize(("filters", "keep"), CASES, ids=[str(c[0]) for c in CASES])
def test_each_filter_lists_exactly_its_requests_newest_first(
        filled: tuple[Target, list[RequestRecord]], filters: dict[str, Any],
        keep: Callable[[RequestRecord], bool]) -> None:
    (url, schema), records = filled
    q = RequestQuery(**{"start": FROM, "end": TO, "limit": 10_000, **filters})
    listing = run_listing(url, q, schema=schema)
    want = expected(records, q, keep)
    assert want, "the case should match something"
    assert [r.request_id for r in listing.requests] == want
    assert listing.has_more is False


def test_requests_carry_their_attempts_and_exact_sums(
        filled: tuple[Target, list[RequestRecord]]) -> None:
    (url, schema), records = filled
    by_id = {r.request_id: r for r in records}
    listing = run_listing(url, RequestQuery(FROM, TO, limit=10_000), schema=schema)
    assert len(listing.requests) == len(records)
    for got in listing.requests:
        rec = by_id[got.request_id]
        assert got.client_request_id == rec.client_request_id
        assert (got.tenant, got.key_id, got.model, got.status, got.error_code) == \
            (rec.tenant, rec.key_id, rec.model, rec.status, rec.error_code)
        assert got.ts == rec.ts
        assert got.cost_usd == rec.cost_usd == sum((a.cost_usd for a in got.attempts),
                                                   Decimal(0))
        assert [(a.deployment, a.outcome, a.status, a.cost_usd) for a in got.attempts] == \
            [(a.deployment, a.outcome, a.status, a.cost_usd) for a in rec.attempts]
        for b in BUCKETS:
            assert got.tokens[b] == sum(getattr(a.usage, b) for a in rec.attempts if a.usage)
        assert got.deployment == (rec.attempts[-1].deployment if rec.attempts else None)


def test_the_limit_keeps_the_newest_and_says_more_match(
        filled: tuple[Target, list[RequestRecord]]) -> None:
    (url, schema), records = filled
    q = RequestQuery(FROM, TO, tenant="acme", limit=25)
    listing = run_listing(url, q, schema=schema)
    assert [r.request_id for r in listing.requests] == \
        expected(records, q, lambda r: r.tenant == "acme")[:25]
    assert listing.has_more is True
    # Exactly as many as match: nothing more.
    n = len(expected(records, q, lambda r: r.tenant == "acme"))
    exact = run_listing(url, RequestQuery(FROM, TO, tenant="acme", limit=n), schema=schema)
    assert len(exact.requests) == n and exact.has_more is False


def test_more_requests_than_one_attempt_query_holds(ledger_target: Target) -> None:
    # Attempts are read 500 request ids at a time: 1,200 requests span three reads.
    records = make_records(1200, seed=5)
    ledger = open_ledger(*ledger_target)
    ledger.connect()
    ledger.write(records)
    ledger.close()
    listing = run_listing(ledger_target[0], RequestQuery(FROM, TO, limit=10_000),
                          schema=ledger_target[1])
    assert sum(len(r.attempts) for r in listing.requests) == \
        sum(len(r.attempts) for r in records)


def test_a_missing_ledger_is_unavailable_never_created(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/nope/ledger.db"
    with pytest.raises(LedgerUnavailable, match="no ledger database"):
        run_listing(url, RequestQuery(FROM, TO))
    assert not (tmp_path / "nope").exists()
