"""SQLite's rollup money sums (integer and fraction parts summed in SQL, joined exactly) equal
Python's exact Decimal sum for any costs: many decimals, none, negative, large."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.ledger_sqlite import SQLiteLedger
from gateway.accounting.pricing import EXACT
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage

DAY = date(2026, 5, 4)
# Up to 20 decimals (past the fast path's 12) on up to ten integer digits: within the 60
# digits the accounting context holds exactly.
costs = st.integers(0, 20).flatmap(lambda places: st.decimals(
    min_value=Decimal("-1000"), max_value=Decimal("1e9"), places=places,
    allow_nan=False, allow_infinity=False)).map(lambda d: d.normalize())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), costs, costs), min_size=1, max_size=12))
def test_rollup_sums_equal_the_exact_decimal_sum(rows: list[tuple[str, Decimal, Decimal]]
                                                 ) -> None:
    ledger = SQLiteLedger("sqlite:///:memory:")
    ledger.connect()
    records = []
    for i, (tenant, cost, saved) in enumerate(rows):
        rec = RequestRecord(f"r{i}", datetime(2026, 5, 4, 12, tzinfo=UTC), tenant, "k", "m",
                            "chat", False, 200, 1.0, None)
        rec.attempts.append(AttemptRecord("d", "cache", "m", "cache_hit", 200,
                                          Usage(1, 0, 0, 1, 0), 1.0, cost_usd=cost))
        rec.saved_usd = saved
        records.append(rec)
    ledger.write(records)
    try:
        for group in ((), ("tenant",)):
            got = {tuple(d[g] for g in group): (d["cost_usd"], d["saved_usd"])
                   for d in ledger.rollup_totals(DAY, DAY, None, group)}
            want: dict[tuple[str, ...], tuple[Decimal, Decimal]] = {}
            for tenant, cost, saved in rows:
                k = (tenant,) if group else ()
                c, s = want.get(k, (Decimal(0), Decimal(0)))
                # Exact adds: the default context would round at 28 digits.
                want[k] = (EXACT.add(c, cost), EXACT.add(s, saved))
            assert got == want
    finally:
        ledger.close()
