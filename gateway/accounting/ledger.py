"""The usage ledger: one interface, a SQLite and a PostgreSQL implementation, chosen by URL.

Tables (same columns in both backends; see docs/accounting.md):
- ``requests``: one row per request (``request_id`` primary key).
- ``attempts``: one row per upstream attempt of a request (``request_id``, ``idx``).
- ``rollups_daily``: per (day, tenant, model, deployment, provider) sums, updated in the same
  transaction as the inserts, and only for requests that transaction actually inserted — a
  record offered twice (a replay, a retry) is ignored, never counted twice.

A ``Ledger`` is used by one thread at a time (the writer thread, or a report); the writer,
``LedgerWriter``, lives in ``writer.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit

from gateway.accounting.ledger_rows import (
    ATTEMPT_COLUMNS,
    BUCKETS,
    MONEY_VALUES,
    REQUEST_COLUMNS,
    ROLLUP_KEY,
    ROLLUP_VALUES,
    day_of,
    dedupe,
    record_from_rows,
)
from gateway.accounting.records import RequestRecord

GROUPS = ("tenant", "model", "provider", "deployment", "day")


class LedgerUnavailable(Exception):
    """The database cannot be reached or is not accepting writes right now (spill, retry)."""


class Ledger(Protocol):
    url: str

    def connect(self) -> None:
        """Open the connection and create the tables if missing. Raises LedgerUnavailable."""
        ...

    def write(self, records: Sequence[RequestRecord]) -> int:
        """Insert records and their rollups in one transaction; ignore request ids already
        stored. Returns how many were new. Raises LedgerUnavailable when the database cannot
        take them (anything else means a record itself is at fault)."""
        ...

    def rollup_totals(
        self, start: date, end: date, tenant: str | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Sums of ``ROLLUP_VALUES`` per group over days ``start..end`` (inclusive)."""
        ...

    def direct_totals(
        self, start: date, end: date, tenant: str | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The same sums computed from the requests/attempts tables (reconciliation)."""
        ...

    def deployment_tokens(
        self, start: date, end: date, deployments: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        """Tokens per (deployment, tenant) over the days (GPU-hour allocation)."""
        ...

    def read_records(
        self, start: date, end: date, tenant: str | None = None
    ) -> Iterator[RequestRecord]:
        """Stored records of the days, rebuilt as RequestRecords (re-pricing, exports)."""
        ...

    def update_costs(self, records: Sequence[RequestRecord]) -> None:
        """Store new attempt costs for existing records and rebuild the rollups of their days."""
        ...

    def read_rows(self, build: Callable[[str], str],
                  params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of one read-only query; ``build(ph)`` writes it with this backend's
        placeholder ("?" or "%s"), so a read-side module (request_list.py) keeps its SQL
        beside its logic and still runs the same SQL on both backends."""
        ...

    def rebuild_rollups(self, start: date, end: date) -> None:
        """Recompute the rollups of the days from the requests/attempts tables."""
        ...

    def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_ledger(url: str, schema: str | None = None, *, create: bool = True) -> Ledger:
    """The ledger implementation for a URL: ``sqlite:///path`` or ``postgresql://…``.

    ``create=False`` (reports) never creates a database or tables: a mistyped path fails
    with LedgerUnavailable instead of answering with an empty report.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from gateway.accounting.ledger_sqlite import SQLiteLedger

        return SQLiteLedger(url, create=create)
    if scheme in ("postgresql", "postgres"):
        from gateway.accounting.ledger_postgres import PostgresLedger

        return PostgresLedger(url, schema=schema, create=create)
    raise ValueError(
        f"ledger.url {redact(url)!r}: unsupported scheme {scheme!r}; use sqlite:///path "
        "or postgresql://user@host:port/db"
    )


# ---------------------------------------------------------------------------------------------
# The tables, declared once; each backend names its own column types (``schema_sql``): money
# is exact in both (TEXT holding a decimal in SQLite, NUMERIC in PostgreSQL).

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id {text} PRIMARY KEY, ts {time} NOT NULL, day {day} NOT NULL,
    tenant {text} NOT NULL, key_id {text} NOT NULL, model {text} NOT NULL,
    endpoint {text} NOT NULL, stream {bool} NOT NULL, status {int} NOT NULL,
    latency_ms {real} NOT NULL, ttft_ms {real}, error_code {text},
    client_disconnected {bool} NOT NULL, attempts {int} NOT NULL, cost_usd {money} NOT NULL,
    client_request_id {text}, error_class {text}
);
CREATE INDEX IF NOT EXISTS requests_day_tenant ON requests (day, tenant);
CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (key_id, ts);
CREATE TABLE IF NOT EXISTS attempts (
    request_id {text} NOT NULL, idx {int} NOT NULL, deployment {text} NOT NULL,
    provider {text} NOT NULL, upstream_model {text} NOT NULL, outcome {text} NOT NULL,
    status {int}, input_uncached {count} NOT NULL, cache_read {count} NOT NULL,
    cache_write {count} NOT NULL, output {count} NOT NULL, reasoning {count} NOT NULL,
    usage_source {text}, cost_usd {money} NOT NULL, duration_ms {real} NOT NULL,
    error {text},
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS rollups_daily (
    day {day} NOT NULL, tenant {text} NOT NULL, model {text} NOT NULL,
    deployment {text} NOT NULL, provider {text} NOT NULL, requests {count} NOT NULL,
    errors {count} NOT NULL, attempts {count} NOT NULL, input_uncached {count} NOT NULL,
    cache_read {count} NOT NULL, cache_write {count} NOT NULL, output {count} NOT NULL,
    reasoning {count} NOT NULL, cost_usd {money} NOT NULL,
    PRIMARY KEY (day, tenant, model, deployment, provider)
);
"""


# Columns added after a ledger may already exist: (table, column, type). A backend adds each
# one that is missing when it connects, so an older ledger keeps working after an upgrade.
ADDED_COLUMNS = (
    ("requests", "client_request_id", "text"),
    ("requests", "error_class", "text"),
    # What a cache hit saved (exact decimal text; NULL when nothing was saved).
    ("requests", "saved_usd", "text"),
    # The guards that ran, as JSON text (docs/guards.md); NULL when none ran.
    ("requests", "guards", "text"),
    # Why a `spill:` rule ordered the attempts as it did (gateway/routing/spill.py).
    ("requests", "route_reason", "text"),
)


# Indexes made after the columns above exist (one names an added column). The requests
# explorer lists newest first under each filter it offers: by time alone, one tenant's, the
# errors (a partial index: few rows), one client request id; `requests_key_ts` serves a key.
ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
    "CREATE INDEX IF NOT EXISTS requests_tenant_ts ON requests (tenant, ts)",
    "CREATE INDEX IF NOT EXISTS requests_errors_ts ON requests (ts) WHERE status >= 400",
    "CREATE INDEX IF NOT EXISTS requests_client_id ON requests (client_request_id) "
    "WHERE client_request_id IS NOT NULL",
)

# Rollup columns added after a ledger may exist, with their backend types. A backend that
# finds them missing adds them and fills them from the requests/attempts tables in the same
# transaction (``savings_backfill_sql``), so an upgraded ledger's rollups stay exact.
ADDED_ROLLUP_COLUMNS = (
    ("cache_hits", "{count} NOT NULL DEFAULT 0"),
    ("saved_usd", "{money} NOT NULL DEFAULT {zero}"),
)


def schema_sql(types: Mapping[str, str]) -> str:
    """The CREATE statements with a backend's column types for text, time (a timestamp), day,
    bool, int, count (a 64-bit sum), real and money."""
    return _SCHEMA.format_map(types)


# ---------------------------------------------------------------------------------------------
# SQL shared by both backends. ``ph`` is the placeholder ("?" or "%s"); ``dec_sum`` the exact
# decimal sum (SQLite: a Python aggregate over TEXT; PostgreSQL: SUM over NUMERIC).


def _where(ph: str, tenant: str | None, prefix: str = "") -> str:
    w = f"{prefix}day >= {ph} AND {prefix}day <= {ph}"
    return w + (f" AND {prefix}tenant = {ph}" if tenant is not None else "")


def rollup_where(ph: str, tenant: str | None) -> str:
    """The WHERE of a rollup read; its parameters are `span(start, end, tenant)`."""
    return _where(ph, tenant)


def check_groups(group_by: Sequence[str]) -> None:
    for g in group_by:
        if g not in GROUPS:
            raise ValueError(f"cannot group by {g!r}; choose from {', '.join(GROUPS)}")


def rollup_sql(group_by: Sequence[str], tenant: str | None, ph: str, dec_sum: str) -> str:
    check_groups(group_by)
    cols = ", ".join(group_by)
    sums = [f"{dec_sum if c in MONEY_VALUES else 'SUM'}({c}) AS {c}" for c in ROLLUP_VALUES]
    q = f"SELECT {', '.join([*group_by, *sums])} FROM rollups_daily WHERE {_where(ph, tenant)}"
    return q + (f" GROUP BY {cols} ORDER BY {cols}" if group_by else "")


_DIRECT_EXPR = {
    "tenant": "r.tenant",
    "model": "r.model",
    "day": "r.day",
    "deployment": "COALESCE(a.deployment, '')",
    "provider": "COALESCE(a.provider, '')",
}
# A request counts once, on its last attempt (or on its only, attempt-less row).
_LAST = "(a.idx IS NULL OR a.idx = r.attempts - 1)"


_HIT = "a.outcome = 'cache_hit'"


def direct_sql(
    group_by: Sequence[str], tenant: str | None, ph: str, dec_sum: str, zero: str,
    money: str = "{}",
) -> str:
    """The rollup sums computed from requests/attempts. ``money`` turns the text column
    ``requests.saved_usd`` into the backend's exact decimal (``CAST({} AS numeric)``)."""
    check_groups(group_by)
    saved = money.format("r.saved_usd")
    sel = [f"{_DIRECT_EXPR[g]} AS {g}" for g in group_by]
    sel += [
        f"SUM(CASE WHEN {_LAST} THEN 1 ELSE 0 END) AS requests",
        f"SUM(CASE WHEN {_LAST} AND r.status >= 400 THEN 1 ELSE 0 END) AS errors",
        "COUNT(a.idx) AS attempts",
        *(f"SUM(COALESCE(a.{b}, 0)) AS {b}" for b in BUCKETS),
        f"{dec_sum}(COALESCE(a.cost_usd, {zero})) AS cost_usd",
        f"SUM(CASE WHEN {_HIT} THEN 1 ELSE 0 END) AS cache_hits",
        f"{dec_sum}(CASE WHEN {_HIT} THEN COALESCE({saved}, {zero}) ELSE {zero} END) "
        "AS saved_usd",
    ]
    q = (
        f"SELECT {', '.join(sel)} FROM requests r "
        f"LEFT JOIN attempts a ON a.request_id = r.request_id WHERE {_where(ph, tenant, 'r.')}"
    )
    if group_by:
        keys = ", ".join(_DIRECT_EXPR[g] for g in group_by)
        q += f" GROUP BY {keys} ORDER BY {keys}"
    return q


def rebuild_sql(ph: str, dec_sum: str, zero: str, money: str = "{}") -> str:
    cols = ", ".join((*ROLLUP_KEY, *ROLLUP_VALUES))
    return f"INSERT INTO rollups_daily ({cols}) " + direct_sql(
        list(ROLLUP_KEY), None, ph, dec_sum, zero, money
    )


def savings_backfill_sql(dec_sum: str, zero: str, money: str = "{}") -> str:
    """Cache hits and saved cost per rollup key, from the cache-hit attempts (run once, when
    the rollup columns are added to an existing ledger); rows are (hits, saved, *key)."""
    saved = money.format("r.saved_usd")
    return (f"SELECT COUNT(*), {dec_sum}(COALESCE({saved}, {zero})), r.day, r.tenant, "
            "r.model, a.deployment, a.provider FROM attempts a "
            f"JOIN requests r ON r.request_id = a.request_id WHERE {_HIT} "
            "GROUP BY r.day, r.tenant, r.model, a.deployment, a.provider")


def savings_update_sql(ph: str) -> str:
    """Sets one rollup row's savings; parameters are a `savings_backfill_sql` row."""
    key = " AND ".join(f"{c} = {ph}" for c in ROLLUP_KEY)
    return f"UPDATE rollups_daily SET cache_hits = {ph}, saved_usd = {ph} WHERE {key}"


def tokens_sql(n_deployments: int, ph: str) -> str:
    total = " + ".join(BUCKETS)
    marks = ", ".join([ph] * n_deployments)
    return (
        f"SELECT deployment, tenant, SUM({total}) FROM rollups_daily "
        f"WHERE day >= {ph} AND day <= {ph} AND deployment IN ({marks}) "
        # A response-cache hit names the deployment that first answered but used no GPU time.
        "AND provider <> 'cache' "
        "GROUP BY deployment, tenant"
    )


def totals_row(group: dict[str, Any], values: Sequence[Any]) -> dict[str, Any]:
    """A query row → {group columns…, requests, …, cost_usd} with ints and a Decimal."""
    out = dict(group)
    for name, v in zip(ROLLUP_VALUES, values, strict=True):
        if name in MONEY_VALUES:
            out[name] = Decimal(str(v)) if v is not None else Decimal(0)
        else:
            out[name] = int(v or 0)
    return out


# ---------------------------------------------------------------------------------------------
# What both backends do the same way, over their own transaction, query and bind primitives.


class SQLLedger:
    """The reads, the cost update and the rollup rebuild of a SQL ledger, written once.

    A backend sets its SQL dialect (placeholder, exact decimal sum, zero cost literal) and
    provides `_run` (one transaction, errors mapped to LedgerUnavailable), `_query`,
    `_execute`/`_executemany` (parameters bound as it stores them) and `_insert`.
    """

    ph: ClassVar[str]
    dec_sum: ClassVar[str]
    zero: ClassVar[str]
    money: ClassVar[str] = "{}"  # a decimal-text column as this backend's exact decimal
    _conn: Any = None

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def _query(self, q: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _execute(self, conn: Any, q: str, params: Sequence[Any]) -> None:
        raise NotImplementedError

    def _executemany(self, conn: Any, q: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _insert(self, conn: Any, records: list[RequestRecord]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- writes -------------------------------------------------------------------------------

    def write(self, records: Sequence[RequestRecord]) -> int:
        return int(self._run(self._insert, dedupe(records)))

    def update_costs(self, records: Sequence[RequestRecord]) -> None:
        if not records:
            return
        days = [day_of(r) for r in records]
        ph = self.ph

        def apply(conn: Any) -> None:
            self._executemany(
                conn, f"UPDATE attempts SET cost_usd = {ph} WHERE request_id = {ph} AND idx = {ph}",
                [(a.cost_usd, r.request_id, i) for r in records for i, a in enumerate(r.attempts)],
            )
            self._executemany(conn, f"UPDATE requests SET cost_usd = {ph} WHERE request_id = {ph}",
                              [(r.cost_usd, r.request_id) for r in records])
            self._rebuild(conn, min(days), max(days))

        self._run(apply)

    def rebuild_rollups(self, start: date, end: date) -> None:
        self._run(self._rebuild, start, end)

    def _rebuild(self, conn: Any, start: date, end: date) -> None:
        self._execute(conn, f"DELETE FROM rollups_daily WHERE {_where(self.ph, None)}",
                      (start, end))
        self._execute(conn, rebuild_sql(self.ph, self.dec_sum, self.zero, self.money),
                      (start, end))

    # -- reads --------------------------------------------------------------------------------

    def _grouped(self, q: str, start: date, end: date, tenant: str | None,
                 group_by: Sequence[str]) -> list[dict[str, Any]]:
        return grouped_rows(self._query(q, span(start, end, tenant)), group_by)

    def rollup_totals(self, start: date, end: date, tenant: str | None,
                      group_by: Sequence[str]) -> list[dict[str, Any]]:
        q = rollup_sql(group_by, tenant, self.ph, self.dec_sum)
        return self._grouped(q, start, end, tenant, group_by)

    def direct_totals(self, start: date, end: date, tenant: str | None,
                      group_by: Sequence[str]) -> list[dict[str, Any]]:
        q = direct_sql(group_by, tenant, self.ph, self.dec_sum, self.zero, self.money)
        return self._grouped(q, start, end, tenant, group_by)

    def deployment_tokens(self, start: date, end: date,
                          deployments: Sequence[str]) -> dict[tuple[str, str], int]:
        if not deployments:
            return {}
        rows = self._query(tokens_sql(len(deployments), self.ph), [start, end, *deployments])
        return {(d, t): int(n or 0) for d, t, n in rows}

    def read_rows(self, build: Callable[[str], str],
                  params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._query(build(self.ph), params)

    def read_records(self, start: date, end: date,
                     tenant: str | None = None) -> Iterator[RequestRecord]:
        where = _where(self.ph, tenant, "r.")
        params = span(start, end, tenant)
        reqs = self._query(
            f"SELECT {', '.join('r.' + c for c in REQUEST_COLUMNS)} FROM requests r "
            f"WHERE {where} ORDER BY r.ts, r.request_id", params)
        atts: dict[str, list[dict[str, Any]]] = {}
        for row in self._query(
            f"SELECT {', '.join('a.' + c for c in ATTEMPT_COLUMNS)} FROM attempts a "
            f"JOIN requests r ON r.request_id = a.request_id WHERE {where}", params):
            d = dict(zip(ATTEMPT_COLUMNS, row, strict=True))
            atts.setdefault(d["request_id"], []).append(d)
        for row in reqs:
            d = dict(zip(REQUEST_COLUMNS, row, strict=True))
            yield record_from_rows(d, atts.get(d["request_id"], []))


def grouped_rows(rows: Sequence[Sequence[Any]], group_by: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """Query rows (the group columns, then ROLLUP_VALUES) as `totals_row` dicts."""
    out = []
    for row in rows:
        group = dict(zip(group_by, row[: len(group_by)], strict=True))
        if isinstance(group.get("day"), str):  # SQLite keeps days as ISO text
            group["day"] = date.fromisoformat(group["day"])
        out.append(totals_row(group, row[len(group_by):]))
    return out


def span(start: date, end: date, tenant: str | None) -> list[Any]:
    """The parameters of `_where`."""
    return [start, end] + ([tenant] if tenant is not None else [])
