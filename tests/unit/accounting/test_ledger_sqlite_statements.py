"""The SQLite ledger's writes use a bounded set of SQL texts whatever the batch sizes: each
distinct text is a prepared statement held in the connection's statement cache, and one per
batch size grew a soak's memory by megabytes (docs/benchmarks.md, "Memory over 1,000,000
requests")."""

from __future__ import annotations

import re

from gateway.accounting.ledger_sqlite import SQLiteLedger
from tests.unit.accounting.factories import make_records

# The existence check's id list, as the trace callback shows it (values expanded).
_ID_LIST = re.compile(r"WHERE request_id IN \(([^)]*)\)")


def _traced_ledger(seen: list[str]) -> SQLiteLedger:
    ledger = SQLiteLedger("sqlite:///:memory:")
    ledger.connect()
    assert ledger._conn is not None
    ledger._conn.set_trace_callback(seen.append)
    return ledger


def test_batches_of_every_size_share_a_few_statements() -> None:
    seen: list[str] = []
    ledger = _traced_ledger(seen)
    records = make_records(sum(range(1, 141)), seed=7)
    start = 0
    for size in range(1, 141):  # every batch size from 1 to 140: 140 texts before the fix
        batch = records[start : start + size]
        start += size
        assert ledger.write(batch) == size
    lengths = {m.group(1).count(",") + 1 for s in seen if (m := _ID_LIST.search(s))}
    assert lengths == {1, 2, 4, 8, 16, 32, 64, 128, 256}


def test_the_padded_check_still_finds_the_records_already_stored() -> None:
    ledger = _traced_ledger([])
    records = make_records(700, seed=8)
    assert ledger.write(records[:3]) == 3
    # 3 already stored + 2 new: the list of 5 ids is padded to 8 with NULLs.
    assert ledger.write(records[:5]) == 2
    # Over one chunk of 512 ids: two lists, the second padded.
    assert ledger.write(records[:700]) == 695
    assert ledger.write(records) == 0
