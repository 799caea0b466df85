"""Usage reports for finance: requests, tokens per bucket and cost, from the daily rollups.

Reading rollups keeps a report over millions of requests to one small GROUP BY; the rollups
are maintained in the same transaction as the records, so the totals equal a direct sum over
the ledger exactly (``reconcile`` checks it). GPU-hour priced deployments add allocation rows:
the hours each was in force in the window (its recorded lifetime, ``gpu_periods``) × its rate,
split among tenants in proportion to their tokens on it (``gpu_billing.py``).

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
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from gateway.accounting.gpu_billing import UNALLOCATED as UNALLOCATED  # re-exported
from gateway.accounting.gpu_billing import (
    GpuAllocation,
    GpuPeriod,
    allocate,
    charges,
    report_window,
    total_hours,
)
from gateway.accounting.gpu_periods import open_period_store
from gateway.accounting.ledger import GROUPS, Ledger, check_groups, open_ledger
from gateway.accounting.ledger_rows import BUCKETS, MONEY_VALUES, ROLLUP_VALUES
from gateway.accounting.pricing import EXACT, ZERO, plain
from gateway.accounting.savings import Savings, savings_by_tenant, savings_from_totals
from gateway.policy.models import Policy

Format = Literal["table", "csv", "json"]
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
    cache_hits: int = 0
    saved_usd: Decimal = ZERO

    @property
    def total_tokens(self) -> int:
        return sum(getattr(self, b) for b in BUCKETS)

    @classmethod
    def from_totals(cls, d: Mapping[str, Any], group_by: Sequence[str]) -> ReportRow:
        return cls(group={g: d[g] for g in group_by}, **{v: d[v] for v in ROLLUP_VALUES})


@dataclass(frozen=True, slots=True)
class Report:
    start: date
    end: date
    tenant: str | None
    group_by: tuple[str, ...]
    rows: list[ReportRow]
    totals: ReportRow
    gpu: list[GpuAllocation] = field(default_factory=list)
    # Tenant → response-cache hits and the cost they saved (gateway/accounting/savings.py).
    savings: dict[str, Savings] = field(default_factory=dict)

    @property
    def saved_usd(self) -> Decimal:
        return sum((s.saved_usd for s in self.savings.values()), ZERO)

    @property
    def gpu_cost_usd(self) -> Decimal:
        return sum((g.cost_usd for g in self.gpu), ZERO)

    @property
    def gpu_hours(self) -> Decimal:
        """The GPU rows' hours: each deployment's billed hours, once (tenants' shares)."""
        return total_hours(self.gpu)

    @property
    def total_cost_usd(self) -> Decimal:
        return EXACT.add(self.totals.cost_usd, self.gpu_cost_usd)


def parse_group_by(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"tenant,model"`` → ("tenant", "model"), checked against the allowed groups."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    groups = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    check_groups(groups)
    return groups


def gpu_allocations(ledger: Ledger, periods: Sequence[GpuPeriod], start: date, end: date,
                    now: datetime) -> list[GpuAllocation]:
    """Each GPU deployment's lifetime in the window × its rate, split among tenants by the
    tokens they used on it (docs/accounting.md, "GPU-hour billing")."""
    begin, stop = report_window(start, end, now)
    billed = charges(periods, begin, stop)
    if not billed:
        return []
    tokens = ledger.deployment_tokens(start, end, sorted({c.deployment for c in billed}))
    return allocate(billed, tokens)


def report_from_ledger(
    ledger: Ledger,
    start: date,
    end: date,
    *,
    tenant: str | None = None,
    group_by: Sequence[str] = ("tenant", "model"),
    periods: Sequence[GpuPeriod] = (),
    now: datetime | None = None,
) -> Report:
    """A report from an open ledger and the GPU periods overlapping the days (``run_report``
    reads both)."""
    if end < start:
        raise ValueError(f"--to ({end}) is before --from ({start}); swap them")
    groups = parse_group_by(group_by)
    sums = ledger.rollup_totals(start, end, tenant, groups)
    rows = [ReportRow.from_totals(d, groups) for d in sums]
    # The total and the savings are sums of the rows just read (exact: ints and Decimals),
    # not more scans of the month's rollups; savings need a query only without a tenant column.
    totals = ReportRow.from_totals(add_up(sums), ())
    savings = savings_from_totals(list(by_tenant(sums).values())) if "tenant" in groups \
        else savings_by_tenant(ledger, start, end, tenant)
    gpu = gpu_allocations(ledger, periods, start, end, now or datetime.now(UTC))
    if tenant is not None:
        gpu = [g for g in gpu if g.tenant == tenant]
    return Report(start, end, tenant, groups, rows, totals, gpu, savings)


def add_up(sums: Sequence[Mapping[str, Any]], into: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """Every rollup value summed over rows of `rollup_totals` (counts as ints, money
    exactly), added to `into` when given."""
    out = into if into is not None else {v: ZERO if v in MONEY_VALUES else 0
                                         for v in ROLLUP_VALUES}
    for d in sums:
        for v in ROLLUP_VALUES:
            out[v] = EXACT.add(out[v], d[v]) if v in MONEY_VALUES else out[v] + d[v]
    return out


def by_tenant(sums: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows of `rollup_totals` with a tenant column, summed per tenant."""
    out: dict[str, dict[str, Any]] = {}
    for d in sums:
        name = d["tenant"]
        acc = out.get(name)
        if acc is None:
            acc = out[name] = {"tenant": name, **add_up(())}
        add_up((d,), acc)
    return out


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
    it through ``asyncio.to_thread`` from async code).

    GPU rows come from the lifetimes the gateways recorded in the same database, so a
    deployment since removed from the policy is still billed for its time; ``policy`` is not
    consulted for them (callers pass it; it is accepted for their convenience)."""
    now = now or datetime.now(UTC)
    ledger = open_ledger(ledger_url, schema, create=False)
    store = open_period_store(ledger_url, schema, create=False)
    try:
        ledger.connect()
        periods = store.read(*report_window(start, end, now)) if end >= start else []
        return report_from_ledger(ledger, start, end, tenant=tenant, group_by=group_by,
                                  periods=periods, now=now)
    finally:
        store.close()
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
    if r.savings and "tenant" not in (*r.group_by, *extra):
        extra.append("tenant")
    # Only a report with cache hits has the column (older readers see the same CSV as before).
    saved = ["cache_hits", "saved_usd"] if r.savings else []
    return ["kind", *r.group_by, *extra, *_COUNTS, "total_tokens", "gpu_hours",
            "gpu_rate_per_hour", "cost_usd", *saved]


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
                    "gpu_rate_per_hour": g.rate_per_hour, "cost_usd": g.cost_usd})
    # What cache hits saved, per tenant: not part of the cost the total row sums.
    for name, s in r.savings.items():
        out.append({"kind": "saved", "tenant": name, "cache_hits": s.hits,
                    "saved_usd": s.saved_usd})
    t = {"kind": "total", "total_tokens": r.totals.total_tokens, "cost_usd": r.total_cost_usd}
    t.update({c: getattr(r.totals, c) for c in _COUNTS})
    if r.gpu:
        t["gpu_hours"] = r.gpu_hours
    if r.savings:
        t["cache_hits"] = sum(s.hits for s in r.savings.values())
        t["saved_usd"] = r.saved_usd
    out.append(t)
    return out


def render_csv(r: Report) -> str:
    """Header row, ISO dates, costs as plain decimal strings; the ``total`` row sums the
    ``usage`` and ``gpu`` rows above it (cost, and the gpu rows' hours)."""
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
    totals.update(token_cost_usd=totals.pop("cost_usd"), gpu_hours=plain(r.gpu_hours),
                  gpu_cost_usd=plain(r.gpu_cost_usd), cost_usd=plain(r.total_cost_usd),
                  cache_hits=sum(s.hits for s in r.savings.values()),
                  saved_usd=plain(r.saved_usd))
    doc = {
        "from": r.start.isoformat(), "to": r.end.isoformat(), "tenant": r.tenant,
        "group_by": list(r.group_by), "rows": [row(x) for x in r.rows],
        "gpu_allocation": [
            {"deployment": g.deployment, "provider": g.provider, "tenant": g.tenant,
             "hours": plain(g.hours), "rate_per_hour": plain(g.rate_per_hour), "tokens": g.tokens,
             "cost_usd": plain(g.cost_usd)} for g in r.gpu
        ],
        "cache_savings": [{"tenant": name, "cache_hits": s.hits, "saved_usd": plain(s.saved_usd)}
                          for name, s in r.savings.items()],
        "totals": totals,
    }
    return json.dumps(doc, indent=2)


def table_cells(r: Report) -> tuple[list[str], list[list[str]]]:
    """The columns and cells of `gateway usage report`'s table (the console shows the same):
    usage rows, GPU rows, then the total row last."""
    cols = [c for c in _csv_columns(r) if c not in ("errors", "attempts")]
    if not r.gpu:
        cols.remove("gpu_hours")
        cols.remove("gpu_rate_per_hour")
    return cols, [[_cell(d.get(c)) for c in cols] for d in _table_rows(r)]


def render_table(r: Report) -> str:
    cols, rows = table_cells(r)
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
    # Unset --from/--to mean month-to-date, as /v1/usage does; the command fills them in.
    p.add_argument("--from", dest="start", type=date.fromisoformat, default=None,
                   help="first UTC day, YYYY-MM-DD (default: the 1st of this month)")
    p.add_argument("--to", dest="end", type=date.fromisoformat, default=None,
                   help="last UTC day (inclusive), YYYY-MM-DD (default: today)")
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
