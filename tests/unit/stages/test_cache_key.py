"""The response cache's key: order-free, blind to fields that do not change the answer, and
never shared between tenants unless asked."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.cache import DEFAULT_IGNORED, CacheRule, CacheSettings, resolve
from gateway.stages.cache_key import cache_key, deterministic, normalise

BODY: dict[str, Any] = {"model": "m", "temperature": 0, "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hi"}]}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=12)


def _shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


def key(body: dict[str, Any], tenant: str | None = "acme", model: str = "m") -> str:
    return cache_key(tenant, model, "chat", body, DEFAULT_IGNORED)


@given(st.dictionaries(st.text(max_size=6), _json, max_size=6), st.integers())
def test_key_order_never_matters(body: dict[str, Any], seed: int) -> None:
    assert key(_shuffled(body, random.Random(seed))) == key(body)


@given(st.dictionaries(st.text(max_size=6), _json, max_size=6))
def test_ignored_fields_do_not_change_the_key(body: dict[str, Any]) -> None:
    noisy = {**body, "user": "u-123", "stream": True, "stream_options": {"include_usage": True},
             "metadata": {"run": "7"}}
    assert key(noisy) == key({k: v for k, v in body.items() if k not in DEFAULT_IGNORED})


def test_what_changes_the_answer_changes_the_key() -> None:
    base = key(BODY)
    assert key({**BODY, "temperature": 0.5}) != base
    assert key({**BODY, "messages": [{"role": "user", "content": "hi "}]}) != base
    assert key({**BODY, "max_tokens": 21}) != base
    assert key(BODY, model="other") != base
    # Whole numbers are one number however written; a null asks for the default.
    assert key({**BODY, "temperature": 0.0}) == base
    assert key({**BODY, "seed": None}) == base


def test_tenants_never_share_a_key_unless_asked() -> None:
    assert key(BODY, tenant="a") != key(BODY, tenant="b")
    assert key(BODY, tenant=None) not in (key(BODY, tenant="a"), key(BODY, tenant="b"))
    # Length-prefixed parts: no tenant/model split can collide with another.
    assert key(BODY, tenant="ab", model="c") != key(BODY, tenant="a", model="bc")


def test_normalised_text_is_sorted_compact_json() -> None:
    assert normalise({"b": 1.0, "a": [1.5, {"d": 2, "c": 3}], "user": "x"}, ["user"]) == \
        '{"a":[1.5,{"c":3,"d":2}],"b":1}'


def test_deterministic_means_temperature_zero_or_a_seed() -> None:
    assert deterministic({"temperature": 0})
    assert deterministic({"temperature": 0.0})
    assert deterministic({"seed": 42, "temperature": 1})
    assert not deterministic({})
    assert not deterministic({"temperature": 0.2})
    assert not deterministic({"temperature": False, "seed": True})  # booleans are not numbers


def test_rules_merge_field_by_field_tenant_last() -> None:
    top = CacheSettings(ttl_s=60)
    model = CacheRule(deterministic_only=False)
    tenant = CacheRule(enabled=False, ttl_s=5)
    r = resolve(top, model, tenant, default_enabled=True)
    assert (r.enabled, r.ttl_s, r.deterministic_only, r.share_across_tenants) == (
        False, 5, False, False)
    assert resolve(None, None, None, default_enabled=False).enabled is False
    assert resolve(None, CacheRule(enabled=True), None, default_enabled=False).ttl_s == 300
