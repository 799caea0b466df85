"""The finance pages' data: spend overview, a tenant's page, the budget burn-down forecast.

Every number comes from `accounting/reports.py` — the code `gateway usage report` and
`/admin/usage` run — over the daily rollups, so a page, the CLI and the CSV agree to the cent
and a month of a large ledger is a few small GROUP BYs. The calls here block (database I/O):
the pages run them in a thread.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.pricing import EXACT, ZERO, plain
from gateway.accounting.reports import Report, ReportRow, run_report, table_cells
from gateway.console import charts
from gateway.errors import InvalidRequest
from gateway.policy.models import Policy

CHART_GROUPS = ("tenant", "model", "provider")
_MICRO = Decimal("0.000001")


def period(query: Mapping[str, str], today: date | None = None) -> tuple[date, date]:
    """`from`/`to` (UTC days, inclusive); month-to-date by default, as `/v1/usage`."""
    today = today or datetime.now(UTC).date()
    try:
        start = date.fromisoformat(query["from"]) if query.get("from") else today.replace(day=1)
        end = date.fromisoformat(query["to"]) if query.get("to") else today
    except ValueError as e:
        raise InvalidRequest(f"from/to must be ISO dates (YYYY-MM-DD): {e}",
                             param="from") from None
    if end < start:
        raise InvalidRequest(f"'to' ({end}) is before 'from' ({start}).", param="to")
    if end - start > timedelta(days=3660):
        raise InvalidRequest("A period covers at most ten years; narrow from/to.", param="from")
    return start, end


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _report(policy: Policy, start: date, end: date, tenant: str | None,
            group_by: Sequence[str]) -> Report:
    return run_report(policy.ledger.url, start, end, tenant=tenant, group_by=group_by,
                      policy=policy, schema=policy.ledger.schema_name)


def _daily(policy: Policy, tenant: str | None,
           queries: Sequence[tuple[date, date, tuple[str, ...]]]) -> list[list[ReportRow]]:
    """Rollup sums for the charts, one small GROUP BY per query over one connection. A chart
    needs only the per-day sums, not a whole report (totals, GPU shares, savings): the
    figures beside it come from the report itself."""
    ledger = open_ledger(policy.ledger.url, policy.ledger.schema_name, create=False)
    try:
        ledger.connect()
        return [[ReportRow.from_totals(d, groups)
                 for d in ledger.rollup_totals(start, end, tenant, groups)]
                for start, end, groups in queries]
    finally:
        ledger.close()


def _series(rows: Sequence[ReportRow], key: str, value: str = "cost_usd"
            ) -> dict[str, dict[date, float]]:
    out: dict[str, dict[date, float]] = {}
    for row in rows:
        name = str(row.group[key]) or "(none)"
        v = row.total_tokens if value == "tokens" else float(row.cost_usd)
        by_day = out.setdefault(name, {})
        by_day[row.group["day"]] = by_day.get(row.group["day"], 0.0) + v
    return out


def totals(report: Report) -> dict[str, str | int]:
    """The headline figures, exact: what the page shows and the tests compare."""
    t = report.totals
    return {"cost_usd": plain(report.total_cost_usd), "token_cost_usd": plain(t.cost_usd),
            "gpu_cost_usd": plain(report.gpu_cost_usd), "requests": t.requests,
            "errors": t.errors, "tokens": t.total_tokens,
            **{b: getattr(t, b) for b in BUCKETS}}


@dataclass(frozen=True, slots=True)
class Spend:
    start: date
    end: date
    tenant: str | None
    by: str
    totals: dict[str, str | int]
    columns: list[str]
    rows: list[list[str]]
    figure: charts.Figure


def spend(policy: Policy, start: date, end: date, tenant: str | None, by: str,
          group_by: Sequence[str] = ("tenant", "model")) -> Spend:
    """The spend overview: totals, the daily cost stacked by `by`, and the usage report's
    table for `group_by` (the same rows as `gateway usage report` and its CSV)."""
    if by not in CHART_GROUPS:
        raise InvalidRequest(f"by must be one of {', '.join(CHART_GROUPS)}.", param="by")
    table = _report(policy, start, end, tenant, group_by)
    [daily] = _daily(policy, tenant, [(start, end, ("day", by))])
    cols, rows = table_cells(table)
    fig = charts.stacked_bars(f"Daily token cost by {by} (USD)", _days(start, end),
                              _series(daily, by), "USD")
    return Spend(start, end, tenant, by, totals(table), cols, rows, fig)


def forecast(daily: Mapping[date, Decimal], today: date
             ) -> tuple[list[tuple[date, Decimal]], list[tuple[date, Decimal]], Decimal]:
    """This month's cumulative spend day by day up to `today`, the linear forecast from
    today to the month's last day (the month-to-date average per day, carried on), and the
    forecast total at month end."""
    first = today.replace(day=1)
    last = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    actual: list[tuple[date, Decimal]] = []
    running = ZERO
    for d in _days(first, today):
        running = EXACT.add(running, daily.get(d, ZERO))
        actual.append((d, running))
    # A forecast is an estimate, not an amount owed: rounded to the micro-dollar, unlike the
    # exact sums above.
    per_day = running / Decimal((today - first).days + 1)
    projected = [(d, (running + per_day * (d - today).days).quantize(_MICRO))
                 for d in _days(today, last)]
    return actual, projected, projected[-1][1]


@dataclass(frozen=True, slots=True)
class TenantPage:
    tenant: str
    start: date
    end: date
    totals: dict[str, str | int]
    models: list[dict[str, Any]]  # per model: tokens per bucket and cost
    gpu: list[dict[str, Any]]
    cost_figure: charts.Figure
    tokens_figure: charts.Figure
    burn_figure: charts.Figure
    budget: dict[str, str | None]


def tenant_page(policy: Policy, tenant: str, start: date, end: date,
                today: date | None = None) -> TenantPage:
    today = today or datetime.now(UTC).date()
    report = by_model = _report(policy, start, end, tenant, ("model",))
    days = _days(start, end)
    # The burn-down is always this month's (budgets are monthly), whatever period is shown.
    daily, month = _daily(policy, tenant, [(start, end, ("day", "model")),
                                           (today.replace(day=1), today, ("day",))])
    models = [{"model": r.group["model"], **{b: getattr(r, b) for b in BUCKETS},
               "requests": r.requests, "total_tokens": r.total_tokens,
               "cost_usd": plain(r.cost_usd)} for r in by_model.rows]
    gpu = [{"deployment": g.deployment, "hours": plain(g.hours),
            "rate_per_hour": plain(g.rate_per_hour), "tokens": g.tokens,
            "cost_usd": plain(g.cost_usd)} for g in report.gpu]
    actual, projected, at_end = forecast({r.group["day"]: r.cost_usd for r in month}, today)
    budget = policy.tenants[tenant].budget if tenant in policy.tenants else None
    limit = budget.monthly_usd if budget is not None else None
    thresholds = list(budget.alerts) if budget is not None else []
    burn = charts.burn_down(f"Budget burn-down, {today:%B %Y} (USD)", actual, projected, limit,
                            thresholds)
    return TenantPage(
        tenant, start, end, totals(report), models, gpu,
        charts.stacked_bars("Token cost by model and day (USD)", days,
                            _series(daily, "model"), "USD"),
        charts.stacked_bars("Tokens by model and day", days,
                            _series(daily, "model", "tokens"), "tokens"),
        burn,
        {"monthly_usd": None if limit is None else plain(limit),
         "spent_usd": plain(actual[-1][1]), "forecast_usd": plain(at_end),
         "alerts": ", ".join(f"{a:.0%}" for a in thresholds) if limit is not None else None})
