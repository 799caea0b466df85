"""Usage reports for finance: requests, tokens per bucket and cost, from the daily rollups.

Reading rollups keeps a report over millions of requests to one small GROUP BY; the rollups
are maintained in the same transaction as the records, so the totals equal a direct sum over
the ledger exactly (``reconcile`` checks it). GPU-hour priced deployments add allocation rows:
the period's hours × rate, split among tenants in proportion to their tokens on it.

Entry points (the CLI ``gateway usage report`` and the admin/tenant HTTP endpoints call these):

    report = run_report(ledger_url, start, end, tenant=None, group_by=("tenant", "model"),
                        policy=policy, schema=None)
    text = render(report, "table" | "csv" | "json")

Dates are UTC days; ``end`` is inclusive. Costs are Decimals, printed as plain decimal strings.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from gateway.accounting.ledger import GROUPS, Ledger, check_groups, open_ledger
from gateway.accounting.ledger_rows import BUCKETS, ROLLUP_VALUES
from gateway.accounting.pricing import EXACT, ZERO, PriceBook, allocate_exact, gpu_cost, plain
from gateway.policy.models import Policy

Format = Literal["table", "csv", "json"]
UNALLOCATED = "(unallocated)"
_COUNTS = ("requests", "errors", "attempts", *BUCKETS)


@dataclass(frozen=True, slots=True)
class ReportRow:
    group: dict[str, Any]  # group column → value (day as a date)
    requests: int = 0
    errors: int = 0
    attempts: int = 0
    input_uncached: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    cost_usd: Decimal = ZERO

    @property
    def total_tokens(self) -> int:
        return sum(getattr(self, b) for b in BUCKETS)

    @classmethod
    def from_totals(cls, d: Mapping[str, Any], group_by: Sequence[str]) -> ReportRow:
        return cls(group={g: d[g] for g in group_by}, **{v: d[v] for v in ROLLUP_VALUES})


@dataclass(frozen=True, slots=True)
class GpuAllocation:
    deployment: str
    provider: str
    tenant: str  # UNALLOCATED: hours nobody used
    hours: int
    rate_per_hour: Decimal
    tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class Report:
    start: date
    end: date
    tenant: str | None
    group_by: tuple[str, ...]
    rows: list[ReportRow]
    totals: ReportRow
    gpu: list[GpuAllocation] = field(default_factory=list)

    @property
    def gpu_cost_usd(self) -> Decimal:
        return sum((g.cost_usd for g in self.gpu), ZERO)

    @property
    def total_cost_usd(self) -> Decimal:
        return EXACT.add(self.totals.cost_usd, self.gpu_cost_usd)


def parse_group_by(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"tenant,model"`` → ("tenant", "model"), checked against the allowed groups."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    groups = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    check_groups(groups)
    return groups


def gpu_hours(start: date, end: date, now: datetime) -> int:
    """Whole hours of ``start..end`` (inclusive days, UTC) that have begun and ended by now."""
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    stop = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    stop = min(stop, now.astimezone(UTC).replace(minute=0, second=0, microsecond=0))
    return max(0, int((stop - begin).total_seconds()) // 3600)


def gpu_allocations(
    ledger: Ledger, start: date, end: date, rates: Mapping[str, Decimal],
    providers: Mapping[str, str], now: datetime,
) -> list[GpuAllocation]:
    """Each GPU deployment's cost over the period, split among tenants by tokens used."""
    hours = gpu_hours(start, end, now)
    if not rates or hours == 0:
        return []
    tokens = ledger.deployment_tokens(start, end, sorted(rates))
    out = []
    for dep in sorted(rates):
        total = gpu_cost(rates[dep], hours)
        weights = {t: n for (d, t), n in tokens.items() if d == dep and n > 0}
        parts = allocate_exact(total, weights) or {UNALLOCATED: total}
        for tenant in sorted(parts):
            out.append(GpuAllocation(dep, providers.get(dep, ""), tenant, hours, rates[dep],
                                     weights.get(tenant, 0), parts[tenant]))
    return out


def report_from_ledger(
    ledger: Ledger,
    start: date,
    end: date,
    *,
    tenant: str | None = None,
    group_by: Sequence[str] = ("tenant", "model"),
    policy: Policy | None = None,
    now: datetime | None = None,
) -> Report:
    """A report from an open ledger (the admin API holds one; ``run_report`` opens one)."""
    if end < start:
        raise ValueError(f"--to ({end}) is before --from ({start}); swap them")
    groups = parse_group_by(group_by)
    rows = [ReportRow.from_totals(d, groups)
            for d in ledger.rollup_totals(start, end, tenant, groups)]
    total = ledger.rollup_totals(start, end, tenant, ())
    totals = ReportRow.from_totals(total[0], ()) if total else ReportRow(group={})
    gpu: list[GpuAllocation] = []
    if policy is not None:
        rates = PriceBook.from_policy(policy).gpu_per_hour
        providers = {d.id: d.provider for r in policy.models.values() for d in r.deployments}
        gpu = gpu_allocations(ledger, start, end, rates, providers, now or datetime.now(UTC))
        if tenant is not None:
            gpu = [g for g in gpu if g.tenant == tenant]
    return Report(start, end, tenant, groups, rows, totals, gpu)


def run_report(
    ledger_url: str,
    start: date,
    end: date,
    *,
    tenant: str | None = None,
    group_by: Sequence[str] = ("tenant", "model"),
    policy: Policy | None = None,
    schema: str | None = None,
    now: datetime | None = None,
) -> Report:
    """Open the ledger at ``ledger_url`` read-side and build the report (blocking I/O: call
    it through ``asyncio.to_thread`` from async code)."""
    ledger = open_ledger(ledger_url, schema, create=False)
    try:
        ledger.connect()
        return report_from_ledger(ledger, start, end, tenant=tenant, group_by=group_by,
                                  policy=policy, now=now)
    finally:
        ledger.close()


def tenant_spend(ledger: Ledger, now: datetime) -> dict[str, tuple[Decimal, Decimal]]:
    """Each tenant's (month-to-date, today) spend in UTC, for restoring budget counters when a
    gateway starts (``Limiter.restore_spend``)."""
    today = now.astimezone(UTC).date()
    month = ledger.rollup_totals(today.replace(day=1), today, None, ("tenant",))
    day = {d["tenant"]: d["cost_usd"] for d in ledger.rollup_totals(today, today, None,
                                                                      ("tenant",))}
    return {d["tenant"]: (d["cost_usd"], day.get(d["tenant"], ZERO)) for d in month}


def reconcile(ledger: Ledger, start: date, end: date, tenant: str | None = None,
              group_by: Sequence[str] = GROUPS) -> list[str]:
    """Differences between the rollups and a direct sum over requests/attempts (none: [])."""
    groups = parse_group_by(group_by)
    key = lambda d: tuple(d[g] for g in groups)  # noqa: E731
    fast = {key(d): d for d in ledger.rollup_totals(start, end, tenant, groups)}
    slow = {key(d): d for d in ledger.direct_totals(start, end, tenant, groups)}
    out = []
    for k in sorted(fast.keys() | slow.keys(), key=str):
        a, b = fast.get(k), slow.get(k)
        for v in ROLLUP_VALUES:
            va = a[v] if a else 0
            vb = b[v] if b else 0
            if va != vb:
                out.append(f"{dict(zip(groups, k, strict=True))} {v}: rollup {va} != ledger {vb}")
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def _cell(v: Any) -> str:
    if isinstance(v, Decimal):
        return plain(v)
    if isinstance(v, date):
        return v.isoformat()
    return "" if v is None else str(v)


def _csv_columns(r: Report) -> list[str]:
    # GPU rows always say whose share of which deployment they are.
    extra = [c for c in ("tenant", "deployment") if r.gpu and c not in r.group_by]
    return ["kind", *r.group_by, *extra, *_COUNTS, "total_tokens", "gpu_hours", "cost_usd"]


def _table_rows(r: Report) -> list[dict[str, Any]]:
    """Every row of the report as column → value, usage first, then GPU, then the total."""
    out: list[dict[str, Any]] = []
    for row in r.rows:
        d = {"kind": "usage", **row.group, "total_tokens": row.total_tokens,
             "cost_usd": row.cost_usd}
        d.update({c: getattr(row, c) for c in _COUNTS})
        out.append(d)
    for g in r.gpu:
        out.append({"kind": "gpu", "tenant": g.tenant, "deployment": g.deployment,
                    "provider": g.provider, "total_tokens": g.tokens, "gpu_hours": g.hours,
                    "cost_usd": g.cost_usd})
    t = {"kind": "total", "total_tokens": r.totals.total_tokens, "cost_usd": r.total_cost_usd}
    t.update({c: getattr(r.totals, c) for c in _COUNTS})
    if r.gpu:
        t["gpu_hours"] = r.gpu[0].hours
    out.append(t)
    return out


def render_csv(r: Report) -> str:
    """Header row, ISO dates, costs as plain decimal strings; the ``total`` row sums the
    ``usage`` and ``gpu`` rows above it."""
    cols = _csv_columns(r)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for d in _table_rows(r):
        w.writerow([_cell(d.get(c)) for c in cols])
    return buf.getvalue()


def render_json(r: Report) -> str:
    def row(x: ReportRow) -> dict[str, Any]:
        d: dict[str, Any] = {g: _cell(v) for g, v in x.group.items()}
        d.update({c: getattr(x, c) for c in _COUNTS})
        d.update(total_tokens=x.total_tokens, cost_usd=plain(x.cost_usd))
        return d

    totals = row(r.totals)
    totals.update(token_cost_usd=totals.pop("cost_usd"), gpu_cost_usd=plain(r.gpu_cost_usd),
                  cost_usd=plain(r.total_cost_usd))
    doc = {
        "from": r.start.isoformat(), "to": r.end.isoformat(), "tenant": r.tenant,
        "group_by": list(r.group_by), "rows": [row(x) for x in r.rows],
        "gpu_allocation": [
            {"deployment": g.deployment, "provider": g.provider, "tenant": g.tenant,
             "hours": g.hours, "rate_per_hour": plain(g.rate_per_hour), "tokens": g.tokens,
             "cost_usd": plain(g.cost_usd)} for g in r.gpu
        ],
        "totals": totals,
    }
    return json.dumps(doc, indent=2)


def render_table(r: Report) -> str:
    cols = [c for c in _csv_columns(r) if c not in ("errors", "attempts")]
    if not r.gpu:
        cols.remove("gpu_hours")
    rows = [[_cell(d.get(c)) for c in cols] for d in _table_rows(r)]
    widths = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(cols)]
    text_cols = {"kind", *GROUPS}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if name in text_cols else c.rjust(w)
            for c, w, name in zip(cells, widths, cols, strict=True)
        ).rstrip()

    head = f"Usage {r.start.isoformat()} .. {r.end.isoformat()} (UTC, inclusive)"
    if r.tenant:
        head += f", tenant {r.tenant}"
    out = [head, line(cols), line(["-" * w for w in widths])]
    out += [line(x) for x in rows[:-1]]
    out += [line(["-" * w for w in widths]), line(rows[-1])]
    return "\n".join(out) + "\n"


def render(r: Report, fmt: Format = "table") -> str:
    return {"table": render_table, "csv": render_csv, "json": render_json}[fmt](r)


# ---------------------------------------------------------------------------------------------
# CLI glue: the lead's `gateway usage report` adds these arguments and calls run_from_args.


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="start", type=date.fromisoformat, required=True,
                   help="first UTC day, YYYY-MM-DD")
    p.add_argument("--to", dest="end", type=date.fromisoformat, required=True,
                   help="last UTC day (inclusive), YYYY-MM-DD")
    p.add_argument("--tenant", default=None, help="only this tenant")
    p.add_argument("--group-by", default="tenant,model", type=parse_group_by,
                   help=f"comma-separated: {','.join(GROUPS)} (default tenant,model)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--ledger-url", default=None, help="overrides the policy's ledger.url")


def run_from_args(args: argparse.Namespace, policy: Policy) -> str:
    url = args.ledger_url or policy.ledger.url
    report = run_report(url, args.start, args.end, tenant=args.tenant, group_by=args.group_by,
                        policy=policy, schema=policy.ledger.schema_name)
    return render(report, args.format)
