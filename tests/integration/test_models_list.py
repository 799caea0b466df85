"""`GET /v1/models` through the official `openai` SDK: OpenAI's model objects with the policy's
description, context length and the caller's own price where the policy has them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.tenancy_support import policy_key

ACME = policy_key("acme-1")
FREE = policy_key("free-1")
PRICES = [
    {"input": "1", "output": "2", "effective_from": "2020-01-01"},
    # The one in force today: cache and reasoning rates default to input and output.
    {"input": "0.15", "output": "0.6", "cache_read": "0.075", "effective_from": "2021-01-01"},
    {"input": "99", "output": "99", "effective_from": "2999-01-01"},
]
TODAY = {"input": "0.15", "cache_read": "0.075", "cache_write": "0.15", "output": "0.6",
         "reasoning": "0.6"}
ACME_PRICE = {"input": "0.1", "cache_read": "0.1", "cache_write": "0.1", "output": "0.4",
              "reasoning": "0.4"}


def models(up: FakeOpenAI) -> dict[str, Any]:
    return {
        "chat": {"description": "General chat, 128k context", "context_length": 128_000,
                 # The first deployment has no price: the listing shows the first that does.
                 "deployments": [{"provider": "up", "model": "free-m"},
                                 {"provider": "up", "model": "m", "pricing": PRICES}]},
        "embed": {"type": "embedding", "deployments": [{"provider": "up", "model": "e"}]},
    }


def extras(m: Any) -> dict[str, Any]:
    return dict(m.model_extra or {})


@pytest.fixture
def open_gw(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway],
            tmp_path: Any) -> Gateway:
    up = fakes("up")
    return gateway(simple_policy(tmp_path, {"up": provider(up)}, models(up)))


def test_models_carry_description_context_length_and_todays_price(open_gw: Gateway) -> None:
    client = openai.OpenAI(base_url=open_gw.base_url, api_key="k", max_retries=0)
    listed = {m.id: m for m in client.models.list()}
    assert sorted(listed) == ["chat", "embed"]
    chat = listed["chat"]
    # OpenAI's model object is intact; the policy's facts ride along as extra keys.
    assert chat.object == "model" and chat.owned_by == "model-gateway" and chat.created > 0
    assert extras(chat) == {"type": "chat", "description": "General chat, 128k context",
                            "context_length": 128_000, "pricing": TODAY}
    # Where the policy has nothing to say, nothing is added.
    assert extras(listed["embed"]) == {"type": "embedding"}
    one = client.models.retrieve("chat")
    assert one.id == "chat" and extras(one) == extras(chat)


@pytest.fixture
def tenant_gw(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway],
              tmp_path: Any) -> Gateway:
    up = fakes("up")
    return gateway(simple_policy(tmp_path, {"up": provider(up)}, models(up), tenants={
        "acme": {"keys": [ACME.entry()],
                 "pricing": {"up/m": [{"input": "0.1", "output": "0.4"}]}},
        "free": {"keys": [FREE.entry()]}}))


def test_a_tenant_with_its_own_price_sees_it(tenant_gw: Gateway) -> None:
    acme = openai.OpenAI(base_url=tenant_gw.base_url, api_key=ACME.key, max_retries=0)
    free = openai.OpenAI(base_url=tenant_gw.base_url, api_key=FREE.key, max_retries=0)
    assert {m.id: extras(m).get("pricing") for m in acme.models.list()} == \
        {"chat": ACME_PRICE, "embed": None}
    assert extras(acme.models.retrieve("chat"))["pricing"] == ACME_PRICE
    assert extras(free.models.retrieve("chat"))["pricing"] == TODAY
