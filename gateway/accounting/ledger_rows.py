"""A RequestRecord as table rows, as rollup deltas, and as one JSON line (the spill file).

Both ledger backends and the spill file use these, so a record means the same thing in
SQLite, PostgreSQL and on disk.

Rollups count each *attempt's* tokens and cost on its own deployment's row, and each
*request* once, on the row of its last attempt (the deployment that answered, or the last one
tried); a request with no attempt at all (refused before any upstream was called) lands on
the row with deployment ``""``. So summing any column over any grouping of rollups equals
the same sum over the requests/attempts tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from gateway.accounting.pricing import EXACT, as_utc, plain
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage

BUCKETS = ("input_uncached", "cache_read", "cache_write", "output", "reasoning")
RollupKey = tuple[date, str, str, str, str]  # day, tenant, model, deployment, provider


def text(s: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; upstream error strings occasionally do.
    return s.replace("\x00", "") if s and "\x00" in s else s


def dedupe(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    """First record of each request id (a batch may hold a replayed copy of another)."""
    seen: set[str | None] = set()
    out = []
    for r in records:
        k = text(r.request_id)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def day_of(rec: RequestRecord) -> date:
    return as_utc(rec.ts).date()


@dataclass(slots=True)
class RollupDelta:
    requests: int = 0
    errors: int = 0
    attempts: int = 0
    input_uncached: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    cost_usd: Decimal = Decimal(0)
    # Response-cache hits and what they saved, on the cache-hit attempt's row (the console
    # and reports read them here instead of joining requests to attempts over a month).
    cache_hits: int = 0
    saved_usd: Decimal = Decimal(0)


def rollup_deltas(records: Iterable[RequestRecord]) -> list[tuple[RollupKey, RollupDelta]]:
    """What these records add to the daily rollups, sorted by key.

    Sorted so concurrent writers (several replicas on one PostgreSQL) lock rollup rows in the
    same order and cannot deadlock.
    """
    acc: dict[RollupKey, RollupDelta] = {}
    for rec in records:
        day, tenant, model = day_of(rec), text(rec.tenant) or "", text(rec.model) or ""
        if not rec.attempts:
            d = acc.setdefault((day, tenant, model, "", ""), RollupDelta())
            d.requests += 1
            d.errors += rec.status >= 400
            continue
        last = len(rec.attempts) - 1
        for i, a in enumerate(rec.attempts):
            key = (day, tenant, model, text(a.deployment) or "", text(a.provider) or "")
            found = acc.get(key)  # not setdefault: it builds a delta per attempt to discard
            if found is None:
                found = acc[key] = RollupDelta()
            d = found
            d.attempts += 1
            if i == last:
                d.requests += 1
                d.errors += rec.status >= 400
            u = a.usage
            if u is not None:
                d.input_uncached += u.input_uncached
                d.cache_read += u.cache_read
                d.cache_write += u.cache_write
                d.output += u.output
                d.reasoning += u.reasoning
            d.cost_usd = EXACT.add(d.cost_usd, a.cost_usd)
            if a.outcome == "cache_hit":
                d.cache_hits += 1
                d.saved_usd = EXACT.add(d.saved_usd, rec.saved_usd)
    return sorted(acc.items(), key=lambda kv: kv[0])


def rollup_rows(records: Iterable[RequestRecord]) -> list[tuple[Any, ...]]:
    """`rollup_deltas` as rows of the ROLLUP_KEY then ROLLUP_VALUES columns, in key order."""
    return [(*key, *(getattr(d, c) for c in ROLLUP_VALUES)) for key, d in rollup_deltas(records)]


def request_row(rec: RequestRecord) -> tuple[Any, ...]:
    return (
        text(rec.request_id), as_utc(rec.ts), day_of(rec), text(rec.tenant), text(rec.key_id),
        text(rec.model), rec.endpoint, bool(rec.stream), int(rec.status), float(rec.latency_ms),
        None if rec.ttft_ms is None else float(rec.ttft_ms),
        text(rec.error_code), rec.client_disconnected, len(rec.attempts), rec.cost_usd,
        text(rec.client_request_id), text(rec.error_class),
        # Exact decimal text in both backends (an added column; NULL: nothing saved).
        plain(rec.saved_usd) if rec.saved_usd else None,
        json.dumps(rec.guards, separators=(",", ":")) if rec.guards else None,
        text(rec.route_reason),
    )


def attempt_rows(rec: RequestRecord) -> list[tuple[Any, ...]]:
    rows = []
    for i, a in enumerate(rec.attempts):
        u = a.usage
        rows.append((
            text(rec.request_id), i, text(a.deployment), text(a.provider), text(a.upstream_model),
            a.outcome, a.status,
            u.input_uncached if u else 0, u.cache_read if u else 0, u.cache_write if u else 0,
            u.output if u else 0, u.reasoning if u else 0, u.source if u else None,
            a.cost_usd, float(a.duration_ms), text(a.error),
        ))
    return rows


REQUEST_COLUMNS = (
    "request_id", "ts", "day", "tenant", "key_id", "model", "endpoint", "stream", "status",
    "latency_ms", "ttft_ms", "error_code", "client_disconnected", "attempts", "cost_usd",
    "client_request_id", "error_class", "saved_usd", "guards", "route_reason",
)
ATTEMPT_COLUMNS = (
    "request_id", "idx", "deployment", "provider", "upstream_model", "outcome", "status",
    *BUCKETS, "usage_source", "cost_usd", "duration_ms", "error",
)
ROLLUP_KEY = ("day", "tenant", "model", "deployment", "provider")
ROLLUP_VALUES = ("requests", "errors", "attempts", *BUCKETS, "cost_usd", "cache_hits",
                 "saved_usd")
# The exact-decimal columns among ROLLUP_VALUES (TEXT in SQLite, NUMERIC in PostgreSQL).
MONEY_VALUES = ("cost_usd", "saved_usd")


def record_from_rows(req: dict[str, Any], attempts: list[dict[str, Any]]) -> RequestRecord:
    """Rebuild a record from its stored rows (re-pricing, exports)."""
    out = []
    for a in sorted(attempts, key=lambda r: r["idx"]):
        usage = None
        if a["usage_source"] is not None:
            usage = Usage(**{b: int(a[b]) for b in BUCKETS}, source=a["usage_source"])
        out.append(AttemptRecord(
            deployment=a["deployment"], provider=a["provider"],
            upstream_model=a["upstream_model"], outcome=a["outcome"], status=a["status"],
            usage=usage, duration_ms=float(a["duration_ms"]), error=a["error"],
            cost_usd=Decimal(str(a["cost_usd"])),
        ))
    ts = req["ts"]
    return RequestRecord(
        request_id=req["request_id"],
        ts=as_utc(datetime.fromisoformat(ts) if isinstance(ts, str) else ts),
        tenant=req["tenant"], key_id=req["key_id"], model=req["model"],
        endpoint=req["endpoint"], stream=bool(req["stream"]), status=req["status"],
        latency_ms=float(req["latency_ms"]), ttft_ms=req["ttft_ms"],
        error_code=req["error_code"], attempts=out,
        client_disconnected=bool(req["client_disconnected"]),
        client_request_id=req.get("client_request_id"), error_class=req.get("error_class"),
        saved_usd=Decimal(str(req.get("saved_usd") or 0)),
        guards=json.loads(req["guards"]) if req.get("guards") else None,
        route_reason=req.get("route_reason"),
    )


# ---------------------------------------------------------------------------------------------
# JSON (the spill file): one object per line, costs as decimal strings, times in ISO UTC.


def to_json(rec: RequestRecord) -> dict[str, Any]:
    # On the request path (the journal writes two per request): literals, no comprehensions
    # over BUCKETS, and the timestamp formatted once per record.
    ts = rec.ts_text
    if ts is None:
        ts = rec.ts_text = (rec.ts if rec.ts.tzinfo is UTC else as_utc(rec.ts)).isoformat()
    d = {
        "request_id": rec.request_id, "ts": ts, "tenant": rec.tenant,
        "key_id": rec.key_id, "model": rec.model, "endpoint": rec.endpoint,
        "stream": rec.stream, "status": rec.status, "latency_ms": rec.latency_ms,
        "ttft_ms": rec.ttft_ms, "error_code": rec.error_code,
        "client_disconnected": rec.client_disconnected,
        "client_request_id": rec.client_request_id, "error_class": rec.error_class,
        "attempts": [_attempt_json(a) for a in rec.attempts] if rec.attempts else [],
    }
    if rec.saved_usd:  # cache hits only: other lines stay as they were
        d["saved_usd"] = plain(rec.saved_usd)
    if rec.guards:
        d["guards"] = rec.guards
    if rec.route_reason:
        d["route_reason"] = rec.route_reason
    return d


def _attempt_json(a: AttemptRecord) -> dict[str, Any]:
    u = a.usage
    return {
        "deployment": a.deployment, "provider": a.provider,
        "upstream_model": a.upstream_model, "outcome": a.outcome, "status": a.status,
        "usage": None if u is None else {
            "input_uncached": u.input_uncached, "cache_read": u.cache_read,
            "cache_write": u.cache_write, "output": u.output, "reasoning": u.reasoning,
            "source": u.source,
        },
        "duration_ms": a.duration_ms, "error": a.error,
        "cost_usd": "0" if not a.cost_usd else plain(a.cost_usd),
    }


def from_json(d: dict[str, Any]) -> RequestRecord:
    attempts = []
    for a in d["attempts"]:
        u = a.get("usage")
        attempts.append(AttemptRecord(
            deployment=a["deployment"], provider=a["provider"],
            upstream_model=a["upstream_model"], outcome=a["outcome"], status=a["status"],
            usage=None if u is None else Usage(
                **{b: int(u.get(b, 0)) for b in BUCKETS}, source=u.get("source", "provider")
            ),
            duration_ms=float(a["duration_ms"]), error=a.get("error"),
            cost_usd=Decimal(a.get("cost_usd", "0")),
        ))
    return RequestRecord(
        request_id=d["request_id"], ts=datetime.fromisoformat(d["ts"]), tenant=d["tenant"],
        key_id=d["key_id"], model=d["model"], endpoint=d["endpoint"], stream=d["stream"],
        status=d["status"], latency_ms=float(d["latency_ms"]), ttft_ms=d.get("ttft_ms"),
        error_code=d.get("error_code"), attempts=attempts,
        client_disconnected=bool(d.get("client_disconnected", False)),
        client_request_id=d.get("client_request_id"), error_class=d.get("error_class"),
        saved_usd=Decimal(d.get("saved_usd") or "0"),
        guards=d.get("guards"),
        route_reason=d.get("route_reason"),
    )
