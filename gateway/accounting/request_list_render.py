"""A request listing (request_list.py) as a table (the CLI), CSV or JSON.

Money is a plain decimal string and times ISO-8601 UTC (`2026-03-05T10:11:12.345678Z`), as in
the usage reports. ``operator=False`` is a tenant's own view (`/v1/usage/requests`): it leaves
out the attempts' error text and the internal exception class, which can name upstream hosts
and code the tenant has no business seeing; everything else is the tenant's own data.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.pricing import plain
from gateway.accounting.request_list import MAX_LIMIT, ListedAttempt, ListedRequest, RequestList

Format = Literal["table", "csv", "json"]
# The spill reason names GPU costs per token: the operator's business, not the tenant's.
_OPERATOR_ONLY = frozenset({"error_class", "error", "route_reason"})


def _time(ts: datetime, timespec: str = "microseconds") -> str:
    return ts.isoformat(timespec=timespec).replace("+00:00", "Z")


def route(r: ListedRequest) -> str:
    """Each attempt as `deployment outcome status`, in order: `a error 503 > b ok 200`."""
    steps = (f"{a.deployment} {a.outcome}" + (f" {a.status}" if a.status is not None else "")
             for a in r.attempts)
    return " > ".join(steps)


def _attempt_json(a: ListedAttempt, operator: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "idx": a.idx, "deployment": a.deployment, "provider": a.provider,
        "upstream_model": a.upstream_model, "outcome": a.outcome, "status": a.status,
        "duration_ms": round(a.duration_ms, 3), **a.tokens, "usage_source": a.usage_source,
        "cost_usd": plain(a.cost_usd), "error": a.error,
    }
    return d if operator else {k: v for k, v in d.items() if k not in _OPERATOR_ONLY}


def request_json(r: ListedRequest, operator: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "request_id": r.request_id, "client_request_id": r.client_request_id,
        "ts": _time(r.ts), "tenant": r.tenant, "key_id": r.key_id, "model": r.model,
        "endpoint": r.endpoint, "stream": r.stream, "status": r.status,
        "error_code": r.error_code, "error_class": r.error_class,
        "latency_ms": round(r.latency_ms, 3),
        "ttft_ms": None if r.ttft_ms is None else round(r.ttft_ms, 3),
        "client_disconnected": r.client_disconnected, "deployment": r.deployment,
        **r.tokens, "total_tokens": r.total_tokens, "cost_usd": plain(r.cost_usd),
        "attempts": [_attempt_json(a, operator) for a in r.attempts],
        "route_reason": r.route_reason,
    }
    return d if operator else {k: v for k, v in d.items() if k not in _OPERATOR_ONLY}


def render_json(listing: RequestList, operator: bool = True) -> str:
    q = listing.query
    doc = {
        "from": q.start.isoformat(), "to": q.end.isoformat(),
        "filters": {"tenant": q.tenant, "model": q.model, "status": q.status,
                    "key_id": q.key_id, "client_request_id": q.client_request_id},
        "limit": q.limit, "has_more": listing.has_more,
        # The `before` of the next (older) page; null on the last page.
        "next_cursor": listing.next_cursor,
        "data": [request_json(r, operator) for r in listing.requests],
    }
    return json.dumps(doc, indent=2)


_CSV_COLUMNS = (
    "request_id", "client_request_id", "ts", "tenant", "key_id", "model", "endpoint", "stream",
    "status", "error_code", "error_class", "attempts", "route", *BUCKETS, "total_tokens",
    "cost_usd", "latency_ms", "ttft_ms", "client_disconnected",
)


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render_csv(listing: RequestList, operator: bool = True) -> str:
    """One row per request, newest first; `route` lists its attempts (`a error 503 > b ok
    200`), the buckets and cost are summed over them."""
    cols = [c for c in _CSV_COLUMNS if operator or c not in _OPERATOR_ONLY]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in listing.requests:
        d = request_json(r, operator)
        d.update(attempts=len(r.attempts), route=route(r))
        w.writerow([_csv_cell(d[c]) for c in cols])
    return buf.getvalue()


_TABLE_COLUMNS = ("time", "request_id", "client_request_id", "tenant", "key", "model",
                  "status", "route", "total_tokens", "cost_usd", "latency_ms")
_NUMERIC = frozenset({"status", "total_tokens", "cost_usd", "latency_ms"})


def _heading(listing: RequestList) -> str:
    q = listing.query
    head = f"Requests {q.start.isoformat()} .. {q.end.isoformat()} (UTC, inclusive), newest first"
    named = (("tenant", q.tenant), ("model", q.model), ("status", q.status),
             ("key", q.key_id), ("client request id", q.client_request_id))
    return head + "".join(f", {name} {value}" for name, value in named if value is not None)


def render_table(listing: RequestList) -> str:
    rows = [[_time(r.ts, "seconds"), r.request_id, r.client_request_id or "", r.tenant,
             r.key_id, r.model, str(r.status), route(r), str(r.total_tokens),
             plain(r.cost_usd), f"{r.latency_ms:.1f}"] for r in listing.requests]
    out = [_heading(listing)]
    if rows:
        widths = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(_TABLE_COLUMNS)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if name in _NUMERIC else c.ljust(w)
                             for c, w, name in zip(cells, widths, _TABLE_COLUMNS,
                                                   strict=True)).rstrip()

        out += [line(_TABLE_COLUMNS), line(["-" * w for w in widths]), *map(line, rows)]
    n = len(rows)
    if listing.has_more:
        out.append(f"{n} newest shown; more match: raise --limit (at most {MAX_LIMIT:,}) or "
                   "narrow the period or filters")
    else:
        out.append(f"{n} request{'s' if n != 1 else ''}")
    return "\n".join(out) + "\n"


def render(listing: RequestList, fmt: Format = "table", operator: bool = True) -> str:
    if fmt == "table":
        return render_table(listing)
    return render_csv(listing, operator) if fmt == "csv" else render_json(listing, operator)
