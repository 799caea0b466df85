"""Whether a tenant a usage query names exists: declared in the policy, or with usage in the
ledger (a tenant since removed from the policy keeps its history). A typo then fails, naming
the tenants there are, instead of answering with an empty report."""

from __future__ import annotations

from datetime import date

from gateway.accounting.ledger import open_ledger
from gateway.call import ANONYMOUS
from gateway.policy.models import Policy


class UnknownTenant(LookupError):
    def __init__(self, tenant: str, known: list[str]) -> None:
        self.tenant = tenant
        self.known = known
        super().__init__(f"unknown tenant {tenant!r}")


def declared_tenants(policy: Policy) -> set[str]:
    """The policy's tenants; in open mode (none declared) every caller is `default`."""
    return set(policy.tenants) or {ANONYMOUS.tenant}


def ledger_tenants(ledger_url: str, schema: str | None = None) -> set[str]:
    """Every tenant with usage in the ledger, over all time (blocking; LedgerUnavailable)."""
    ledger = open_ledger(ledger_url, schema, create=False)
    try:
        ledger.connect()
        return {str(row["tenant"])
                for row in ledger.rollup_totals(date.min, date.max, None, ("tenant",))}
    finally:
        ledger.close()


def check_tenant(policy: Policy, tenant: str, ledger_url: str | None = None) -> None:
    """Raise UnknownTenant unless `tenant` is declared or has usage. The ledger is read only
    for a tenant the policy does not declare, so the usual query costs no extra round trip."""
    declared = declared_tenants(policy)
    if tenant in declared:
        return
    seen = ledger_tenants(ledger_url or policy.ledger.url, policy.ledger.schema_name)
    if tenant not in seen:
        raise UnknownTenant(tenant, sorted(declared | seen))
