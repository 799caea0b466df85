"""Builders shared by the routing tests: policy deployments, targets, calls and signals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from gateway.call import Call
from gateway.policy.models import Deployment, Price
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals


def target(name: str, weight: float = 1.0, *, input_price: str | None = None,
           output_price: str | None = None, gpu_cost: str | None = None,
           pricing: list[Price] | None = None) -> Target:
    prices = pricing or []
    if input_price is not None or output_price is not None:
        prices = [Price(input=Decimal(input_price or "0"), output=Decimal(output_price or "0"))]
    d = Deployment(provider="p", model="m", name=name, weight=weight, pricing=prices,
                   gpu_cost_per_hour=Decimal(gpu_cost) if gpu_cost is not None else None)
    return Target("m", d, "p")


def chat(system: str = "", user: str = "hi", *, session: str | None = None,
         stream: bool = False, **extra: Any) -> Call:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    return Call(endpoint="chat", model="m", body={"model": "m", "messages": messages, **extra},
                raw=b"", stream=stream, request_id="r", session=session)


def completion(prompt: Any) -> Call:
    return Call(endpoint="completions", model="m", body={"model": "m", "prompt": prompt},
                raw=b"", stream=False, request_id="r")


def signals(**loads: EndpointLoad) -> Signals:
    return Signals(loads=dict(loads))


def ids(order: list[Target]) -> list[str]:
    return [t.id for t in order]
