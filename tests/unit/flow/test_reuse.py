"""Charging cache churn: a tenant that never reads back the KV it writes (a flood of single
turns) is charged `single_use_kv_weight` times its work; a chat that re-sends its conversation
pays the plain cost. Counts only."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.flow.cost import request_cost
from gateway.flow.reuse import KvReuse


def _single(new_chars: int = 2000) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "s" * 8000},
                         {"role": "user", "content": "u" * new_chars}], "max_tokens": 100}


def _turn(n: int) -> dict[str, Any]:
    """The n-th turn of a chat: n earlier (user, reply) pairs, then a new user message."""
    history: list[dict[str, str]] = []
    for i in range(n):
        history += [{"role": "user", "content": f"{i}" * 400},
                    {"role": "assistant", "content": f"{i}" * 800}]
    return {"messages": [{"role": "system", "content": "s" * 8000}, *history,
                         {"role": "user", "content": "q" * 400}], "max_tokens": 100}


def test_a_flood_of_single_turns_pays_the_weight_a_chat_the_plain_cost() -> None:
    kv = KvReuse(3.0)
    plain = request_cost(_single(), 256)
    assert kv.cost("flood", _single(), 256) == pytest.approx(3 * plain)
    # A chat's first turn is new work too; once its turns re-send more than they add it is
    # charged the plain cost.
    for n in range(4):
        kv.cost("chat", _turn(n), 256)
    assert kv.reuse("chat") == 1.0
    assert kv.cost("chat", _turn(4), 256) == pytest.approx(request_cost(_turn(4), 256))
    assert kv.cost("flood", _single(), 256) == pytest.approx(3 * plain)  # still a flood


def test_partial_reuse_is_charged_in_between_and_a_weight_of_one_keeps_nothing() -> None:
    kv = KvReuse(2.0)
    kv.cost("mixed", _turn(1), 256)  # re-sends 300 tokens, adds 200
    kv.cost("mixed", _single(4000), 256)  # re-sends nothing, adds 1100
    reuse = kv.reuse("mixed")
    assert 0.0 < reuse < 1.0
    cost = kv.cost("mixed", _single(4000), 256)
    assert request_cost(_single(4000), 256) < cost < 2 * request_cost(_single(4000), 256)
    off = KvReuse(1.0)
    assert off.cost("flood", _single(), 256) == request_cost(_single(), 256)
    assert off.reuse("flood") == 1.0  # nothing counted


def test_a_tenant_that_turns_into_a_flood_is_charged_as_one_and_tenants_are_bounded() -> None:
    kv = KvReuse(3.0, max_tenants=2)
    for n in range(6):
        kv.cost("t", _turn(n), 256)
    assert kv.reuse("t") == 1.0
    for _ in range(1000):
        kv.cost("t", _single(), 256)
    assert kv.reuse("t") < 0.01  # the decayed history no longer counts
    kv.cost("u", _single(), 256)
    kv.cost("v", _single(), 256)
    assert kv.reuse("t") == 1.0  # forgotten: the least recently seen of three
    assert kv.reuse("v") == 0.0
