"""The `/v1/models` objects: OpenAI's four keys, then only what the policy has."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from gateway.accounting.pricing import PriceBook, Rates
from gateway.api.model_list import model_obj
from gateway.policy.models import Deployment, ModelRoute, Price

JUNE = datetime(2026, 6, 1, tzinfo=UTC)
ROUTE = ModelRoute(deployments=[Deployment(provider="p", model="unpriced"),
                                Deployment(provider="p", model="priced")])


def rates(inp: str, out: str, since: str | None = None) -> Rates:
    return Rates.from_price(Price(input=Decimal(inp), output=Decimal(out),
                                  effective_from=since))


BOOK = PriceBook.from_rates(
    {"p/priced": [rates("3", "15"), rates("2.5", "10", "2026-05-01"),
                  rates("1", "1", "2026-07-01")]},
    {("acme", "p/priced"): [rates("0.000001", "0")]})


def test_bare_model_has_only_openais_keys_and_type() -> None:
    route = ModelRoute(deployments=[Deployment(provider="p", model="m")], type="embedding")
    assert model_obj("e", 7, route, PriceBook(), "default", JUNE) == {
        "id": "e", "object": "model", "created": 7, "owned_by": "model-gateway",
        "type": "embedding"}


def test_description_context_length_and_the_price_in_force() -> None:
    route = ROUTE.model_copy(update={"description": "Chat", "context_length": 8192})
    obj = model_obj("chat", 7, route, BOOK, "default", JUNE)
    assert obj["description"] == "Chat" and obj["context_length"] == 8192
    assert obj["pricing"] == {"input": "2.5", "cache_read": "2.5", "cache_write": "2.5",
                              "output": "10", "reasoning": "10"}
    before = model_obj("chat", 7, ROUTE, BOOK, "default", datetime(2026, 1, 1, tzinfo=UTC))
    assert before["pricing"]["input"] == "3"


def test_a_tenant_override_is_the_price_shown_to_that_tenant() -> None:
    obj = model_obj("chat", 7, ROUTE, BOOK, "acme", JUNE)
    # Plain decimal strings, never floats or exponents.
    assert obj["pricing"]["input"] == "0.000001" and obj["pricing"]["output"] == "0"
