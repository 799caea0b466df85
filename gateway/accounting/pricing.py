"""Exact cost: the policy's prices, effective-dated and overridable per tenant, as Decimals.

Prices are USD per million tokens per usage bucket. A cost is ``Σ tokens × rate`` scaled by
10⁻⁶, computed in a context that traps ``Inexact``: if any step would round, it raises instead
of silently losing a fraction of a cent. No float touches a price or a cost.

Choosing a price for (deployment, tenant, when):
1. the tenant's override list for that deployment, if it has one whose ``effective_from`` is
   not after ``when``;
2. else the deployment's own list, same rule;
3. else zero (a deployment without prices — e.g. a GPU-hour priced one — costs nothing per
   token; its GPU cost is billed by its recorded lifetime at report time, see
   ``gpu_billing.py``).
Within one list the latest ``effective_from`` not after ``when`` wins; no ``effective_from``
means "since always".
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import (
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Underflow,
)

from pydantic import ValidationError

from gateway.accounting.records import RequestRecord
from gateway.accounting.usage import Usage
from gateway.policy.models import Policy, Price

# Every accounting operation runs in this context: 60 digits is far beyond any real cost, and
# trapping Inexact/Rounded turns a would-be silent rounding into an exception.
EXACT = Context(
    prec=60,
    traps=[Inexact, Rounded, InvalidOperation, DivisionByZero, Overflow, Underflow, Clamped],
)
ZERO = Decimal(0)


class PricingError(ValueError):
    """The policy's prices are inconsistent (names the YAML path and what to change)."""


def plain(d: Decimal) -> str:
    """A Decimal as a plain string without exponent or trailing zeros: ``0.0000125``, ``3``."""
    s = format(d.normalize(EXACT), "f")
    return "0" if s in ("-0", "") else s


def as_utc(when: datetime) -> datetime:
    # Naive datetimes in records and tests mean UTC: the gateway stamps everything in UTC.
    tz = when.tzinfo
    if tz is UTC:  # the gateway's own stamps: astimezone would still call utcoffset()
        return when
    return when.replace(tzinfo=UTC) if tz is None else when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Rates:
    """One resolved price: USD per million tokens for each bucket, defaults applied."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal
    effective_from: datetime | None = None

    @classmethod
    def from_price(cls, p: Price) -> Rates:
        since = None
        if p.effective_from:
            try:
                since = as_utc(datetime.fromisoformat(p.effective_from))
            except ValueError:
                raise PricingError(
                    f"effective_from {p.effective_from!r} is not an ISO date; "
                    "write it as YYYY-MM-DD"
                ) from None
        return cls(
            input=p.input,
            cache_read=p.input if p.cache_read is None else p.cache_read,
            cache_write=p.input if p.cache_write is None else p.cache_write,
            output=p.output,
            reasoning=p.output if p.reasoning is None else p.reasoning,
            effective_from=since,
        )

    def cost(self, u: Usage) -> Decimal:
        c = EXACT
        total = ZERO
        for tokens, rate in (
            (u.input_uncached, self.input),
            (u.cache_read, self.cache_read),
            (u.cache_write, self.cache_write),
            (u.output, self.output),
            (u.reasoning, self.reasoning),
        ):
            if tokens:
                total = c.add(total, c.multiply(Decimal(tokens), rate))
        return total.scaleb(-6, c)

    def worst_case(self, prompt_tokens: int, max_tokens: int) -> Decimal:
        c = EXACT
        inp = max(self.input, self.cache_read, self.cache_write)
        out = max(self.output, self.reasoning)
        total = c.add(c.multiply(Decimal(prompt_tokens), inp), c.multiply(Decimal(max_tokens), out))
        return total.scaleb(-6, c)


def _dated(prices: Sequence[Rates], where: str) -> tuple[Rates, ...]:
    """Sort by effective date (undated first); two prices on one date are ambiguous."""
    floor = datetime.min.replace(tzinfo=UTC)
    out = sorted(prices, key=lambda r: r.effective_from or floor)
    for a, b in itertools.pairwise(out):
        if a.effective_from == b.effective_from:
            since = a.effective_from.date().isoformat() if a.effective_from else "(undated)"
            raise PricingError(
                f"{where}: two prices take effect on {since}; give each a distinct "
                "effective_from or remove one"
            )
    return tuple(out)


def _rates(prices: Sequence[Price], where: str) -> list[Rates]:
    out = []
    for i, p in enumerate(prices):
        try:
            out.append(Rates.from_price(p))
        except PricingError as e:
            raise PricingError(f"{where}[{i}].effective_from: {e}") from None
    return out


def _pick(prices: Sequence[Rates], when: datetime) -> Rates | None:
    chosen = None
    for r in prices:  # sorted ascending: the last one not after `when` wins
        if r.effective_from is None or r.effective_from <= when:
            chosen = r
        else:
            break
    return chosen


class PriceBook:
    """Prices of every deployment (and tenant overrides), resolved once per policy load.

    ``PriceBook(policy)`` raises PricingError for inconsistent prices (run it in
    ``gateway policy check``); ``PriceBook.from_rates`` builds one directly (tests, tools).
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self._base: dict[str, tuple[Rates, ...]] = {}
        self._overrides: dict[tuple[str, str], tuple[Rates, ...]] = {}
        self.gpu_per_hour: dict[str, Decimal] = {}
        if policy is not None:
            self._load(policy)

    @classmethod
    def from_policy(cls, policy: Policy) -> PriceBook:
        return cls(policy)

    @classmethod
    def from_rates(
        cls,
        base: Mapping[str, Sequence[Rates]],
        overrides: Mapping[tuple[str, str], Sequence[Rates]] | None = None,
        gpu_per_hour: Mapping[str, Decimal] | None = None,
    ) -> PriceBook:
        book = cls()
        book._base = {d: _dated(p, f"deployment {d!r} pricing") for d, p in base.items()}
        book._overrides = {
            k: _dated(p, f"tenants.{k[0]}.pricing.{k[1]}") for k, p in (overrides or {}).items()
        }
        book.gpu_per_hour = dict(gpu_per_hour or {})
        return book

    def _load(self, policy: Policy) -> None:
        origin: dict[str, tuple[str, object]] = {}
        for model, route in policy.models.items():
            for i, dep in enumerate(route.deployments):
                where = f"models.{model}.deployments[{i}]"
                seen = origin.get(dep.id)
                # The same deployment may serve several public models; it must price the same.
                sig = (dep.pricing, dep.gpu_cost_per_hour, dep.gpu_since)
                if seen is not None and seen[1] != sig:
                    raise PricingError(
                        f"{where}: deployment {dep.id!r} is also declared at {seen[0]} with "
                        "different pricing; give one of them a distinct `name`"
                    )
                origin[dep.id] = (where, sig)
                self._base[dep.id] = _dated(_rates(dep.pricing, f"{where}.pricing"),
                                            f"{where}.pricing")
                if dep.gpu_cost_per_hour is not None:
                    self.gpu_per_hour[dep.id] = dep.gpu_cost_per_hour
        for tenant, tc in policy.tenants.items():
            for dep_id, raw in tc.pricing.items():
                where = f"tenants.{tenant}.pricing.{dep_id}"
                if dep_id not in self._base:
                    known = ", ".join(sorted(self._base)) or "(none)"
                    raise PricingError(
                        f"{where}: no deployment named {dep_id!r}; known deployments: {known}"
                    )
                try:
                    prices = [Price.model_validate(p) for p in raw]
                except ValidationError as e:
                    raise PricingError(f"{where}: {e}") from None
                self._overrides[(tenant, dep_id)] = _dated(_rates(prices, where), where)

    def rates(self, deployment_id: str, when: datetime, tenant: str | None = None) -> Rates | None:
        """The price in force for this deployment, tenant and instant (None: free)."""
        when = as_utc(when)
        if tenant is not None:
            own = self._overrides.get((tenant, deployment_id))
            if own:
                picked = _pick(own, when)
                if picked is not None:
                    return picked
        return _pick(self._base.get(deployment_id, ()), when)

    def cost(
        self, deployment_id: str, usage: Usage | None, when: datetime, tenant: str | None = None
    ) -> Decimal:
        """Exact USD cost of ``usage`` on ``deployment_id`` at ``when`` for ``tenant``."""
        if usage is None:
            return ZERO
        r = self.rates(deployment_id, when, tenant)
        return ZERO if r is None else r.cost(usage)

    def worst_case(
        self,
        deployment_ids: Iterable[str],
        prompt_tokens: int,
        max_tokens: int,
        tenant: str | None,
        when: datetime,
    ) -> Decimal:
        """Most this request can cost on any of the deployments (budget reservation)."""
        worst = ZERO
        for d in deployment_ids:
            r = self.rates(d, when, tenant)
            if r is not None:
                worst = max(worst, r.worst_case(prompt_tokens, max_tokens))
        return worst

    def price_record(self, record: RequestRecord) -> RequestRecord:
        """Set ``cost_usd`` on every attempt from its usage (in place; returns the record). A
        `cache_hit` attempt costs nothing: its price is what the record saved (``saved_usd``)."""
        saved = ZERO
        for a in record.attempts:
            cost = self.cost(a.deployment, a.usage, record.ts, record.tenant)
            if a.outcome == "cache_hit":
                saved += cost
                cost = ZERO
            a.cost_usd = cost
        record.saved_usd = saved
        return record


def reprice(records: Iterable[RequestRecord], book: PriceBook) -> list[RequestRecord]:
    """Copies of past records with every attempt's cost recomputed from its stored usage.

    Deterministic: the price chosen depends only on the record's own timestamp, tenant and
    deployment, so re-running it with the same book gives the same costs to the last digit.
    """
    out = []
    for rec in records:
        copy = dataclasses.replace(rec, attempts=[dataclasses.replace(a) for a in rec.attempts])
        out.append(book.price_record(copy))
    return out


def allocate_exact(total: Decimal, weights: Mapping[str, int]) -> dict[str, Decimal]:
    """Split ``total`` in proportion to integer ``weights``; the parts sum exactly to it.

    Shares are counted in quanta of 10⁻⁹ USD (or finer, when ``total`` itself has more
    digits), floored, and the leftover quanta go one each to the largest remainders — ties to
    the smaller key — so the result is deterministic and ``sum(parts) == total`` always.
    """
    keys = sorted(k for k, w in weights.items() if w > 0)
    if not keys:
        return {}
    exp = total.as_tuple().exponent
    assert isinstance(exp, int), "GPU cost must be finite"
    quantum_exp = min(-9, exp)
    units = int(total.scaleb(-quantum_exp, EXACT))
    denom = sum(weights[k] for k in keys)
    base = {k: units * weights[k] // denom for k in keys}
    left = units - sum(base.values())
    by_remainder = sorted(keys, key=lambda k: (-(units * weights[k] % denom), k))
    for k in by_remainder[:left]:
        base[k] += 1
    return {k: Decimal(v).scaleb(quantum_exp, EXACT) for k, v in base.items()}
