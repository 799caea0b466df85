"""PriceBook: exact Decimal costs, effective dates, tenant overrides, worst case, GPU split."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.accounting.pricing import (
    PriceBook,
    PricingError,
    Rates,
    allocate_exact,
    plain,
    reprice,
)
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.policy.models import Policy


def policy(**tenants: Any) -> Policy:
    return Policy.model_validate({
        "providers": {"oa": {"kind": "openai", "base_url": "http://x/v1", "api_key": "k"},
                      "gpu": {"kind": "vllm", "base_url": "http://y/v1"}},
        "models": {
            "gpt": {"deployments": [
                {"provider": "oa", "model": "gpt-4o", "pricing": [
                    {"input": "2.5", "output": "10", "cache_read": "1.25"},
                    {"input": "2", "output": "8", "effective_from": "2026-03-01"},
                    {"input": "1", "output": "4", "effective_from": "2026-06-01"},
                ]},
                {"provider": "gpu", "model": "llama", "gpu_cost_per_hour": "2.75"},
            ]},
            "big": {"deployments": [
                {"provider": "oa", "model": "o3", "pricing": [
                    {"input": "10", "output": "40", "cache_write": "12.5", "reasoning": "50"}]},
            ]},
        },
        "tenants": tenants,
    })


JAN = datetime(2026, 1, 15, 12, tzinfo=UTC)
U = Usage(input_uncached=1000, cache_read=200, cache_write=0, output=300, reasoning=0)


def test_cost_is_exact_decimal_with_bucket_defaults() -> None:
    book = PriceBook(policy())
    c = book.cost("oa/gpt-4o", U, JAN)
    # 1000×2.5 + 200×1.25 + 300×10 = 5750 per million → 0.00575 exactly.
    assert isinstance(c, Decimal)
    assert c == Decimal("0.00575")
    # cache_write defaults to input, reasoning to output
    r = book.rates("oa/gpt-4o", JAN)
    assert r is not None and r.cache_write == Decimal("2.5") and r.reasoning == Decimal("10")


def test_cost_has_no_float_rounding_even_for_long_prices() -> None:
    rates = Rates(Decimal("0.123456789123456789"), Decimal(0), Decimal(0), Decimal("1E-7"),
                  Decimal(0))
    book = PriceBook.from_rates({"d": [rates]})
    u = Usage(input_uncached=987_654_321_987, output=3)
    # The same sum in integers (units of 1e-24 USD): Python's default 28-digit Decimal
    # context would round this; the price book must not.
    n = 123456789123456789 * 987_654_321_987 + 3 * 10**11
    assert book.cost("d", u, JAN) == Decimal(f"{n}E-24")
    assert plain(book.cost("d", u, JAN)) == "121932.631356419751277487119743"


def test_effective_dates_pick_latest_not_after_the_request() -> None:
    book = PriceBook(policy())
    u = Usage(input_uncached=1_000_000)
    assert book.cost("oa/gpt-4o", u, datetime(2026, 2, 28, 23, 59, tzinfo=UTC)) == Decimal("2.5")
    assert book.cost("oa/gpt-4o", u, datetime(2026, 3, 1, tzinfo=UTC)) == Decimal(2)
    assert book.cost("oa/gpt-4o", u, datetime(2026, 5, 31, tzinfo=UTC)) == Decimal(2)
    assert book.cost("oa/gpt-4o", u, datetime(2027, 1, 1, tzinfo=UTC)) == Decimal(1)
    # a naive datetime is UTC
    assert book.cost("oa/gpt-4o", u, datetime(2026, 3, 1)) == Decimal(2)


def test_before_the_first_dated_price_costs_nothing() -> None:
    book = PriceBook.from_rates({"d": [Rates(Decimal(5), Decimal(5), Decimal(5), Decimal(5),
                                             Decimal(5), datetime(2026, 2, 1, tzinfo=UTC))]})
    assert book.cost("d", U, JAN) == 0
    assert book.cost("d", U, datetime(2026, 2, 1, tzinfo=UTC)) > 0


def test_tenant_override_wins_and_falls_back_before_it_starts() -> None:
    book = PriceBook(policy(acme={"pricing": {"oa/gpt-4o": [
        {"input": "1", "output": "1", "effective_from": "2026-02-01"}]}}))
    u = Usage(input_uncached=1_000_000, output=1_000_000)
    feb = datetime(2026, 2, 2, tzinfo=UTC)
    assert book.cost("oa/gpt-4o", u, feb, "acme") == Decimal(2)
    assert book.cost("oa/gpt-4o", u, feb, "other") == Decimal("12.5")
    assert book.cost("oa/gpt-4o", u, JAN, "acme") == Decimal("12.5")  # override not yet in force


def test_unpriced_and_unknown_deployments_cost_zero() -> None:
    book = PriceBook(policy())
    assert book.cost("gpu/llama", U, JAN) == 0
    assert book.cost("nowhere", U, JAN) == 0
    assert book.cost("oa/gpt-4o", None, JAN) == 0
    assert book.gpu_per_hour == {"gpu/llama": Decimal("2.75")}


def test_worst_case_is_the_max_over_deployments_with_dearest_buckets() -> None:
    book = PriceBook(policy())
    w = book.worst_case(["oa/gpt-4o", "oa/o3", "gpu/llama"], 1000, 500, None, JAN)
    # o3: prompt at max(input 10, cache_write 12.5), completion at max(output 40, reasoning 50)
    assert w == Decimal("0.0375")
    assert book.worst_case(["gpu/llama"], 1000, 500, None, JAN) == 0


@pytest.mark.parametrize(("tenants", "fragment"), [
    ({"acme": {"pricing": {"typo/model": [{"input": 1}]}}}, "no deployment named 'typo/model'"),
    ({"acme": {"pricing": {"oa/gpt-4o": [{"input": -1}]}}}, "tenants.acme.pricing.oa/gpt-4o"),
    ({"acme": {"pricing": {"oa/gpt-4o": [{"input": 1, "effective_from": "2026-01-01"},
                                         {"input": 2, "effective_from": "2026-01-01"}]}}},
     "two prices take effect on 2026-01-01"),
    ({"acme": {"pricing": {"oa/gpt-4o": [{"input": 1, "effective_from": "soon"}]}}},
     "not an ISO date"),
])
def test_inconsistent_prices_are_refused_with_their_path(
    tenants: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(PricingError, match=fragment.replace("/", ".").replace(".", r"[./]")):
        PriceBook(policy(**tenants))


def test_same_deployment_id_with_different_prices_is_refused() -> None:
    p = Policy.model_validate({
        "providers": {"oa": {"kind": "openai", "base_url": "http://x/v1", "api_key": "k"}},
        "models": {
            "a": {"deployments": [{"provider": "oa", "model": "m", "pricing": [{"input": 1}]}]},
            "b": {"deployments": [{"provider": "oa", "model": "m", "pricing": [{"input": 2}]}]},
        },
    })
    with pytest.raises(PricingError, match=r"also declared at models\.a"):
        PriceBook(p)


def _record(ts: datetime, tenant: str = "acme") -> RequestRecord:
    return RequestRecord(
        request_id="r1", ts=ts, tenant=tenant, key_id="k", model="gpt", endpoint="chat",
        stream=False, status=200, latency_ms=1.0,
        attempts=[
            AttemptRecord("oa/gpt-4o", "oa", "gpt-4o", "error", 503, None, 1.0),
            AttemptRecord("oa/gpt-4o", "oa", "gpt-4o", "ok", 200, U, 1.0,
                          cost_usd=Decimal("999")),
        ])


def test_reprice_recomputes_from_stored_usage_deterministically() -> None:
    book = PriceBook(policy())
    old = _record(datetime(2026, 3, 5, tzinfo=UTC))
    a = reprice([old], book)
    b = reprice([old], book)
    assert old.attempts[1].cost_usd == Decimal("999")  # the input is not modified
    # March price: 1000×2 + 200×2 (cache_read defaults to input) + 300×8 = 4800 / 1e6
    assert a[0].cost_usd == b[0].cost_usd == Decimal("0.0048")
    assert a[0].attempts[0].cost_usd == 0


def test_allocate_exact_sums_to_the_whole_and_is_proportional() -> None:
    parts = allocate_exact(Decimal("100"), {"a": 1, "b": 1, "c": 1})
    assert sum(parts.values()) == Decimal(100)
    # 100/3: two get 33.333333333, the remaining quantum goes to the smallest key on a tie
    assert parts["a"] == Decimal("33.333333334")
    assert parts["b"] == parts["c"] == Decimal("33.333333333")
    assert allocate_exact(Decimal(5), {"a": 0}) == {}


def test_allocate_exact_random_cases_always_reconcile() -> None:
    rng = random.Random(7)
    for _ in range(300):
        total = Decimal(rng.randint(0, 10**9)).scaleb(-rng.randint(0, 12))
        weights = {f"t{i}": rng.randint(0, 10**7) for i in range(rng.randint(1, 12))}
        parts = allocate_exact(total, weights)
        if any(weights.values()):
            assert sum(parts.values(), Decimal(0)) == total
            assert all(p >= 0 for p in parts.values())
            assert allocate_exact(total, dict(reversed(weights.items()))) == parts


def test_same_gpu_deployment_with_different_gpu_since_is_refused() -> None:
    dep = {"provider": "gpu", "model": "llama", "gpu_cost_per_hour": "2"}
    p = Policy.model_validate({
        "providers": {"gpu": {"kind": "vllm", "base_url": "http://y/v1"}},
        "models": {"a": {"deployments": [{**dep, "gpu_since": "2026-03-01"}]},
                   "b": {"deployments": [{**dep, "gpu_since": "2026-03-02"}]}},
    })
    with pytest.raises(PricingError, match=r"also declared at models\.a"):
        PriceBook(p)
