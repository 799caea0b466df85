"""The ledger's records as the tests read them back: the SQLite ledger in a test's tmp folder,
polled (records are written off the request path)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.accounting.ledger import open_ledger
from gateway.accounting.records import RequestRecord
from tests.fakes.base import wait_until


def records(tmp: Path) -> list[RequestRecord]:
    """Every record of yesterday to tomorrow (UTC) in `tmp`/ledger.db ([] before it exists)."""
    ledger = open_ledger(f"sqlite:///{tmp}/ledger.db", create=False)
    try:
        ledger.connect()
        today = datetime.now(UTC).date()
        return list(ledger.read_records(today - timedelta(days=1), today + timedelta(days=1)))
    except Exception:
        return []
    finally:
        ledger.close()


def by_client_id(tmp: Path, client_id: str) -> list[RequestRecord]:
    return [r for r in records(tmp) if r.client_request_id == client_id]


def record(tmp: Path, *, client_id: str | None = None, request_id: str | None = None,
           timeout: float = 10.0) -> RequestRecord:
    """The one record of a request, named by the client's `x-request-id` or the gateway's
    own id, once it is written."""
    def match() -> list[RequestRecord]:
        return [r for r in records(tmp) if (client_id is not None
                                            and r.client_request_id == client_id)
                or (request_id is not None and r.request_id == request_id)]
    assert wait_until(lambda: len(match()) > 0, timeout=timeout), (client_id, request_id)
    found = match()
    assert len(found) == 1, found
    return found[0]
