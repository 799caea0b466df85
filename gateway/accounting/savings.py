"""What the response cache saved, per tenant, from the ledger: the `cache_hit` requests and
their `saved_usd` (the price their usage would have cost at the deployment that first
answered). Read from the daily rollups' `cache_hits` and `saved_usd` columns, kept in the same
transaction as the records (ledger_rows.py), so a month is one small GROUP BY, not a join of
requests to attempts; exact decimals in both backends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from gateway.accounting.ledger import Ledger
from gateway.accounting.pricing import ZERO


@dataclass(frozen=True, slots=True)
class Savings:
    hits: int = 0
    saved_usd: Decimal = ZERO


def savings_by_tenant(ledger: Ledger, start: date, end: date,
                      tenant: str | None = None) -> dict[str, Savings]:
    """Tenant → its cache hits and what they saved over days ``start..end`` (inclusive);
    tenants without a hit are left out."""
    rows = ledger.rollup_totals(start, end, tenant, ("tenant",))
    return savings_from_totals(rows)


def savings_from_totals(rows: list[dict[str, Any]]) -> dict[str, Savings]:
    """The same from rollup totals already grouped by tenant."""
    out = {d["tenant"]: Savings(d["cache_hits"], d["saved_usd"]) for d in rows
           if d["cache_hits"]}
    return dict(sorted(out.items()))
