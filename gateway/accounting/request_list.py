"""The ledger one request at a time: who called, with which client id, what each attempt did
and what it cost — newest first, filtered (`gateway usage requests`, `/admin/requests`,
`/v1/usage/requests`).

Reports (reports.py) sum the rollups; this reads the `requests` and `attempts` tables
themselves, so it answers "what happened to the request my client sent as `x-request-id: X`?".
Each row carries both ids: `request_id`, the ledger's key, chosen by the gateway (sent back as
`x-gateway-request-id`), and `client_request_id`, the client's own `x-request-id`, which is not
unique (clients reuse ids; two requests with one client id are two rows). Prompt and completion
text are never stored, so never listed.

    listing = run_listing(ledger_url, RequestQuery(start, end, tenant="acme", status="error"),
                          schema=None)

The same SQL runs on SQLite and PostgreSQL (`Ledger.read_rows` supplies the placeholder);
token sums and costs are added here, exactly (costs are Decimals).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import partial
from typing import Any, Literal

from gateway.accounting.ledger import Ledger, open_ledger
from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.pricing import ZERO, as_utc

StatusFilter = int | Literal["error"]
DEFAULT_LIMIT = 100
# A listing is read whole into memory and rendered at once; past this, use a report (sums) or
# narrow the period and filters.
MAX_LIMIT = 10_000
# Attempts are read for the listed requests by id; 500 ids per statement stays well inside
# SQLite's bound-parameter limit (999 in older builds) and PostgreSQL's (65,535).
_IDS_PER_QUERY = 500


def parse_status(text: str) -> StatusFilter:
    """``"error"`` (any status >= 400) or one HTTP status such as ``"429"``; ValueError says
    what is accepted."""
    value = text.strip().lower()
    if value == "error":
        return "error"
    if value.isdigit() and 100 <= int(value) <= 599:
        return int(value)
    raise ValueError(f"status must be an HTTP status (100-599) or 'error' (any status >= 400), "
                     f"not {text!r}")


def parse_limit(text: str | int) -> int:
    """A row count in 1..MAX_LIMIT; ValueError says the bounds."""
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT:,}, "
                         f"not {text!r}") from None
    if not 1 <= n <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT:,} (got {n}); narrow the period "
                         "or the filters, or use a usage report for totals")
    return n


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """Which requests to list: UTC days ``start..end`` (inclusive), each filter exact when set."""

    start: date
    end: date
    tenant: str | None = None
    model: str | None = None  # the public model name the client asked for
    status: StatusFilter | None = None
    key_id: str | None = None
    client_request_id: str | None = None
    limit: int = DEFAULT_LIMIT
    # Keyset pagination: only requests older than this (ts, request_id) — the last row of
    # the previous page (`RequestList.next_cursor`) — so page N costs what page 1 does.
    before: tuple[datetime, str] | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"--to ({self.end}) is before --from ({self.start}); swap them")
        parse_limit(self.limit)


@dataclass(frozen=True, slots=True)
class ListedAttempt:
    idx: int
    deployment: str
    provider: str
    upstream_model: str
    outcome: str
    status: int | None
    duration_ms: float
    tokens: dict[str, int]  # bucket -> tokens (zeros when no usage was recorded)
    usage_source: str | None  # provider, estimated, provider_partial, or None (no usage)
    cost_usd: Decimal
    # The failure as the gateway recorded it; may name an upstream host, so operators only.
    error: str | None


@dataclass(frozen=True, slots=True)
class ListedRequest:
    request_id: str  # the gateway's own (the ledger's key, `x-gateway-request-id`)
    client_request_id: str | None  # the client's `x-request-id`, as it sent it
    ts: datetime
    tenant: str
    key_id: str
    model: str
    endpoint: str
    stream: bool
    status: int
    error_code: str | None
    error_class: str | None  # the exception class of an internal error (operators only)
    latency_ms: float
    ttft_ms: float | None
    client_disconnected: bool
    cost_usd: Decimal
    attempts: tuple[ListedAttempt, ...] = ()
    # Why a `spill:` rule ordered the attempts (gateway/routing/spill.py); operators only.
    route_reason: str | None = None

    @property
    def tokens(self) -> dict[str, int]:
        """Each bucket summed over the attempts (every attempt is billed, docs/accounting.md)."""
        return {b: sum(a.tokens[b] for a in self.attempts) for b in BUCKETS}

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def deployment(self) -> str | None:
        """The deployment of the last attempt: the one that answered, or the last one tried."""
        return self.attempts[-1].deployment if self.attempts else None


@dataclass(frozen=True, slots=True)
class RequestList:
    query: RequestQuery
    requests: list[ListedRequest] = field(default_factory=list)
    # More requests matched than `query.limit`: the listing shows the newest ones.
    has_more: bool = False

    @property
    def next_cursor(self) -> str | None:
        """The `before` value of the next (older) page, when there is one."""
        if not self.has_more or not self.requests:
            return None
        last = self.requests[-1]
        return format_cursor(last.ts, last.request_id)


def format_cursor(ts: datetime, request_id: str) -> str:
    """A page cursor as text: the row's UTC time and its id (neither is a secret)."""
    return f"{as_utc(ts).isoformat(timespec='microseconds')}~{request_id}"


def parse_cursor(text: str) -> tuple[datetime, str]:
    """`format_cursor`'s text back; ValueError says what is expected."""
    ts, sep, request_id = text.partition("~")
    try:
        when = as_utc(datetime.fromisoformat(ts))
    except ValueError:
        when = None
    if not sep or not request_id or when is None:
        raise ValueError(f"before must be a page cursor as the previous page gave it "
                         f"(time~request_id), not {text!r}")
    return when, request_id


# ---------------------------------------------------------------------------------------------
# SQL (both backends; `ph` is the placeholder)

_REQUEST_COLUMNS = (
    "request_id", "client_request_id", "ts", "tenant", "key_id", "model", "endpoint", "stream",
    "status", "error_code", "error_class", "latency_ms", "ttft_ms", "client_disconnected",
    "cost_usd", "route_reason",
)
_ATTEMPT_COLUMNS = (
    "request_id", "idx", "deployment", "provider", "upstream_model", "outcome", "status",
    "duration_ms", *BUCKETS, "usage_source", "cost_usd", "error",
)
# Filter -> column; each set filter is one `column = ph`.
_EXACT = (("tenant", "tenant"), ("model", "model"), ("key_id", "key_id"),
          ("client_request_id", "client_request_id"))


def requests_sql(q: RequestQuery, ph: str) -> str:
    """The SELECT of the matching requests, newest first, one more than the limit (to tell
    whether there are more); its parameters are `requests_params(q)`."""
    # The days as a time range too (the same rows): an index on ts then both bounds the scan
    # and yields the newest first, so a listing reads about `limit` rows, not the month.
    where = [f"day >= {ph}", f"day <= {ph}", f"ts >= {ph}", f"ts <= {ph}"]
    where += [f"{column} = {ph}" for attr, column in _EXACT if getattr(q, attr) is not None]
    if q.status == "error":
        where.append("status >= 400")
    elif q.status is not None:
        where.append(f"status = {ph}")
    if q.before is not None:
        where.append(f"ts <= {ph} AND (ts < {ph} OR request_id < {ph})")
    # ts is timestamptz in PostgreSQL and fixed-width ISO-8601 UTC text in SQLite: both sort
    # by time; the id breaks ties between requests stamped in the same microsecond.
    return (f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM requests WHERE {' AND '.join(where)} "
            f"ORDER BY ts DESC, request_id DESC LIMIT {ph}")


def requests_params(q: RequestQuery) -> list[Any]:
    params: list[Any] = [q.start, q.end, datetime.combine(q.start, time(), UTC),
                         datetime.combine(q.end, time.max, UTC)]
    params += [getattr(q, attr) for attr, _ in _EXACT if getattr(q, attr) is not None]
    if isinstance(q.status, int):
        params.append(q.status)
    if q.before is not None:
        ts, request_id = q.before
        params += [ts, ts, request_id]
    return [*params, q.limit + 1]


def attempts_sql(n_ids: int, ph: str) -> str:
    marks = ", ".join([ph] * n_ids)
    return (f"SELECT {', '.join(_ATTEMPT_COLUMNS)} FROM attempts WHERE request_id IN ({marks}) "
            "ORDER BY request_id, idx")


# ---------------------------------------------------------------------------------------------
# Rows -> values (SQLite hands back text for times and money and ints for booleans)


def _money(v: Any) -> Decimal:
    return ZERO if v is None else Decimal(str(v))


def _time(v: Any) -> datetime:
    return as_utc(datetime.fromisoformat(v) if isinstance(v, str) else v)


def _attempt(d: dict[str, Any]) -> ListedAttempt:
    return ListedAttempt(
        idx=int(d["idx"]), deployment=d["deployment"], provider=d["provider"],
        upstream_model=d["upstream_model"], outcome=d["outcome"],
        status=None if d["status"] is None else int(d["status"]),
        duration_ms=float(d["duration_ms"]), tokens={b: int(d[b] or 0) for b in BUCKETS},
        usage_source=d["usage_source"], cost_usd=_money(d["cost_usd"]), error=d["error"])


def _request(d: dict[str, Any], attempts: Sequence[ListedAttempt]) -> ListedRequest:
    return ListedRequest(
        request_id=d["request_id"], client_request_id=d["client_request_id"],
        ts=_time(d["ts"]), tenant=d["tenant"], key_id=d["key_id"], model=d["model"],
        endpoint=d["endpoint"], stream=bool(d["stream"]), status=int(d["status"]),
        error_code=d["error_code"], error_class=d["error_class"],
        latency_ms=float(d["latency_ms"]),
        ttft_ms=None if d["ttft_ms"] is None else float(d["ttft_ms"]),
        client_disconnected=bool(d["client_disconnected"]), cost_usd=_money(d["cost_usd"]),
        attempts=tuple(sorted(attempts, key=lambda a: a.idx)), route_reason=d["route_reason"])


def list_from_ledger(ledger: Ledger, q: RequestQuery) -> RequestList:
    """The listing from an open ledger (blocking)."""
    rows = ledger.read_rows(lambda ph: requests_sql(q, ph), requests_params(q))
    has_more = len(rows) > q.limit
    reqs = [dict(zip(_REQUEST_COLUMNS, r, strict=True)) for r in rows[: q.limit]]
    ids = [r["request_id"] for r in reqs]
    attempts: dict[str, list[ListedAttempt]] = {}
    for i in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[i : i + _IDS_PER_QUERY]
        for row in ledger.read_rows(partial(attempts_sql, len(chunk)), chunk):
            a = dict(zip(_ATTEMPT_COLUMNS, row, strict=True))
            attempts.setdefault(a["request_id"], []).append(_attempt(a))
    listed = [_request(r, attempts.get(r["request_id"], ())) for r in reqs]
    return RequestList(q, listed, has_more)


def run_listing(ledger_url: str, q: RequestQuery, *, schema: str | None = None) -> RequestList:
    """Open the ledger at ``ledger_url`` read-side (never creating it) and list (blocking
    I/O: call it through ``asyncio.to_thread`` from async code). LedgerUnavailable when the
    database cannot be read."""
    ledger = open_ledger(ledger_url, schema, create=False)
    try:
        ledger.connect()
        return list_from_ledger(ledger, q)
    finally:
        ledger.close()

