"""What the response cache saved, per tenant, from the ledger: the `cache_hit` requests and
their `saved_usd` (the price their usage would have cost at the deployment that first
answered). Summed here in exact decimals: the column is decimal text in both backends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from gateway.accounting.ledger import Ledger
from gateway.accounting.pricing import EXACT, ZERO


@dataclass(frozen=True, slots=True)
class Savings:
    hits: int = 0
    saved_usd: Decimal = ZERO


def savings_by_tenant(ledger: Ledger, start: date, end: date,
                      tenant: str | None = None) -> dict[str, Savings]:
    """Tenant → its cache hits and what they saved over days ``start..end`` (inclusive)."""

    def build(ph: str) -> str:
        q = ("SELECT r.tenant, r.saved_usd FROM requests r JOIN attempts a "
             "ON a.request_id = r.request_id AND a.outcome = 'cache_hit' "
             f"WHERE r.day >= {ph} AND r.day <= {ph}")
        return q + (f" AND r.tenant = {ph}" if tenant is not None else "")

    params: list[object] = [start, end] + ([tenant] if tenant is not None else [])
    out: dict[str, Savings] = {}
    for name, saved in ledger.read_rows(build, params):
        prev = out.get(name, Savings())
        value = Decimal(str(saved)) if saved is not None else ZERO
        out[name] = Savings(prev.hits + 1, EXACT.add(prev.saved_usd, value))
    return dict(sorted(out.items()))
