"""Confining single-use traffic: which deployments a tenant that never reads back its KV may
use, and when it is confined at all. Sets only, no timing."""

from __future__ import annotations

from typing import Any

from gateway.flow.confine import Confinement, rendezvous
from gateway.flow.reuse import KvReuse

DEPLOYMENTS = [f"gpu-{i}" for i in range(8)]


def _single() -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "s" * 8000},
                         {"role": "user", "content": "u" * 2000}], "max_tokens": 100}


def _chat_turn() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "a" * 400},
                         {"role": "assistant", "content": "b" * 1600},
                         {"role": "user", "content": "c" * 400}], "max_tokens": 100}


def _reuse(**tenants: dict[str, Any]) -> KvReuse:
    kv = KvReuse()
    kv.track = True
    for tenant, body in tenants.items():
        for _ in range(5):
            kv.cost(tenant, body, 256)
    return kv


def test_the_set_is_stable_sized_and_the_same_for_any_order_of_the_deployments() -> None:
    chosen = rendezvous("flood", DEPLOYMENTS, 2)
    assert len(chosen) == 2 and chosen <= set(DEPLOYMENTS)
    assert rendezvous("flood", list(reversed(DEPLOYMENTS)), 2) == chosen
    assert rendezvous("flood", DEPLOYMENTS, 0) and len(rendezvous("flood", DEPLOYMENTS, 0)) == 1
    # Another tenant's set is drawn independently (not always the first deployments).
    sets = {rendezvous(f"t{i}", DEPLOYMENTS, 2) for i in range(20)}
    assert len(sets) > 5


def test_a_deployment_going_down_moves_only_what_it_held() -> None:
    chosen = rendezvous("flood", DEPLOYMENTS, 2)
    gone = sorted(chosen)[0]
    kept = rendezvous("flood", [d for d in DEPLOYMENTS if d != gone], 2)
    assert chosen - {gone} <= kept
    other = next(d for d in DEPLOYMENTS if d not in chosen)
    assert rendezvous("flood", [d for d in DEPLOYMENTS if d != other], 2) == chosen


def test_a_single_use_tenant_is_confined_while_a_chat_is_active() -> None:
    kv = _reuse(flood=_single(), main=_chat_turn())
    c = Confinement(0.25)
    only = c.deployments("flood", kv, DEPLOYMENTS, ["flood", "main"])
    assert only == rendezvous("flood", DEPLOYMENTS, 2)
    # The chat is kept on the rest of the pool while the flood is running or queued.
    assert c.deployments("main", kv, DEPLOYMENTS, ["flood", "main"]) == frozenset(
        DEPLOYMENTS) - only
    assert c.deployments("main", kv, DEPLOYMENTS, ["main"]) is None  # the flood left


def test_the_others_keep_what_the_confined_tenants_leave_free() -> None:
    kv = _reuse(f1=_single(), f2=_single(), main=_chat_turn())
    c = Confinement(0.5)
    active = ["f1", "f2", "main"]
    s1 = c.deployments("f1", kv, DEPLOYMENTS, active)
    s2 = c.deployments("f2", kv, DEPLOYMENTS, active)
    assert s1 is not None and s2 is not None
    rest = frozenset(DEPLOYMENTS) - s1 - s2
    assert c.deployments("main", kv, DEPLOYMENTS, active) == (rest or None)
    # Sets covering the pool leave the chat every deployment.
    c = Confinement(0.9)
    c.deployments("f1", kv, DEPLOYMENTS, active)
    assert c.deployments("main", kv, DEPLOYMENTS, active) is None


def test_nobody_is_confined_alone_among_single_use_tenants_or_when_off() -> None:
    kv = _reuse(flood=_single(), other=_single(), main=_chat_turn())
    c = Confinement(0.25)
    assert c.deployments("flood", kv, DEPLOYMENTS, ["flood"]) is None
    # Two floods: no chat's cache to protect, both keep the whole pool.
    assert c.deployments("flood", kv, DEPLOYMENTS, ["flood", "other"]) is None
    assert Confinement(None).deployments("flood", kv, DEPLOYMENTS,
                                         ["flood", "main"]) is None
    # A pool of one deployment has nothing to confine to.
    assert c.deployments("flood", kv, DEPLOYMENTS[:1], ["flood", "main"]) is None


def test_the_set_follows_the_deployments_up() -> None:
    kv = _reuse(flood=_single(), main=_chat_turn())
    c = Confinement(0.25)
    active = ["flood", "main"]
    first = c.deployments("flood", kv, DEPLOYMENTS, active)
    assert first is not None
    down = sorted(first)[0]
    up = [d for d in DEPLOYMENTS if d != down]
    second = c.deployments("flood", kv, up, active)
    assert second is not None and down not in second and len(second) == 2
    # Half of 7, rounded up.
    assert c.deployments("flood", kv, up, active) == second
    assert len(Confinement(0.5).deployments("flood", kv, up, active) or ()) == 4
