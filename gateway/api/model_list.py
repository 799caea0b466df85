"""The model objects of `GET /v1/models` and `/v1/models/{id}`.

OpenAI's shape (`id`, `object`, `created`, `owned_by`) with what the policy knows about each
model added where it has it: `type`, `description`, `context_length`, and `pricing`, the price
this caller pays per million tokens today. The openai SDK keeps unknown keys
(`model.model_extra`), so applications and the console can show them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.accounting.pricing import PriceBook, Rates, plain
from gateway.policy.models import ModelRoute


def model_obj(name: str, created: int, route: ModelRoute, prices: PriceBook, tenant: str,
              when: datetime) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": name, "object": "model", "created": created,
                           "owned_by": "model-gateway", "type": route.type}
    if route.description is not None:
        obj["description"] = route.description
    if route.context_length is not None:
        obj["context_length"] = route.context_length
    rates = model_rates(route, prices, tenant, when)
    if rates is not None:
        obj["pricing"] = pricing(rates)
    return obj


def model_rates(route: ModelRoute, prices: PriceBook, tenant: str,
                when: datetime) -> Rates | None:
    """The price of the first deployment that has one in force at `when` — the tenant's own
    when it has an override there. A model's deployments usually price alike; the first is the
    one the policy author lists as the model's home."""
    for d in route.deployments:
        rates = prices.rates(d.id, when, tenant)
        if rates is not None:
            return rates
    return None


def pricing(rates: Rates) -> dict[str, str]:
    # Strings, as the policy writes them: a float would turn 0.15 into 0.15000000000000002.
    return {"input": plain(rates.input), "cache_read": plain(rates.cache_read),
            "cache_write": plain(rates.cache_write), "output": plain(rates.output),
            "reasoning": plain(rates.reasoning)}
