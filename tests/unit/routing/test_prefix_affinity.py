from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.base import NO_SIGNALS, EndpointLoad
from gateway.routing.strategies.prefix_affinity import PrefixAffinity, affinity_key
from tests.unit.routing.targets import chat, completion, ids, signals, target

CANDS = [target(f"gpu-{i}") for i in range(4)]
SYSTEM = "You are a meticulous support agent for ACME routers. " * 20


def test_same_session_goes_to_the_same_endpoint() -> None:
    s = PrefixAffinity()
    picks = {s.order(CANDS, NO_SIGNALS, chat(user=f"question {i}", session="sess-42"))[0].id
             for i in range(20)}
    assert len(picks) == 1


def test_turns_of_one_conversation_stick_and_conversations_spread() -> None:
    s = PrefixAffinity()
    homes = []
    for conv in range(200):
        opening = f"Conversation {conv}: my router keeps rebooting"
        turn1 = chat(SYSTEM, opening)
        turn3 = chat(SYSTEM, opening)
        turn3.body["messages"] += [{"role": "assistant", "content": "Try a reset."},
                                   {"role": "user", "content": "Still broken."}]
        a = s.order(CANDS, NO_SIGNALS, turn1)[0].id
        assert s.order(CANDS, NO_SIGNALS, turn3)[0].id == a
        homes.append(a)
    spread = Counter(homes)
    assert set(spread) == {t.id for t in CANDS}
    assert min(spread.values()) >= 25  # 50 each on average


def test_similar_prefixes_stick_when_only_the_tail_differs() -> None:
    s = PrefixAffinity(prefix_chars=256)
    base = "Summarise the following contract clause by clause. " * 10
    picks = {s.order(CANDS, NO_SIGNALS, completion(base + f" Clause {i}: ..."))[0].id
             for i in range(30)}
    assert len(picks) == 1


def test_bounded_load_spills_over_to_the_next_endpoint_on_the_ring() -> None:
    s = PrefixAffinity(load_factor=1.25)
    call = chat(SYSTEM, "hello")
    home, runner_up = ids(s.order(CANDS, NO_SIGNALS, call))[:2]
    # home holds 10 of the 12 outstanding: bound is ceil(1.25 × 13 / 4) = 5.
    loads = {t.id: EndpointLoad(in_flight=0) for t in CANDS}
    loads[home] = EndpointLoad(in_flight=10)
    loads[runner_up] = EndpointLoad(in_flight=2)
    order = ids(s.order(CANDS, signals(**loads), call))
    assert order[0] == runner_up
    assert home in order[1:]  # still a fallback


def test_a_long_reported_queue_is_walked_past_even_under_the_bound() -> None:
    s = PrefixAffinity(max_waiting=4)
    call = chat(SYSTEM, "hello")
    home = s.order(CANDS, NO_SIGNALS, call)[0].id
    loads = {t.id: EndpointLoad(in_flight=3, waiting=0) for t in CANDS}
    loads[home] = EndpointLoad(in_flight=0, waiting=6)
    assert s.order(CANDS, signals(**loads), call)[0].id != home


def test_under_the_bound_the_key_stays_home_despite_some_load() -> None:
    s = PrefixAffinity()
    call = chat(SYSTEM, "hello")
    home = s.order(CANDS, NO_SIGNALS, call)[0].id
    loads = {t.id: EndpointLoad(in_flight=4) for t in CANDS}
    loads[home] = EndpointLoad(in_flight=5)
    assert s.order(CANDS, signals(**loads), call)[0].id == home


def test_removing_a_deployment_moves_only_its_own_keys() -> None:
    s = PrefixAffinity()
    calls = [chat(SYSTEM, f"user {i}") for i in range(300)]
    before = [s.order(CANDS, NO_SIGNALS, c)[0].id for c in calls]
    survivors = [t for t in CANDS if t.id != "gpu-2"]
    after = [s.order(survivors, NO_SIGNALS, c)[0].id for c in calls]
    for b, a in zip(before, after, strict=True):
        if b != "gpu-2":
            assert a == b


def test_the_order_is_a_permutation_following_the_ring() -> None:
    s = PrefixAffinity()
    order = ids(s.order(CANDS, NO_SIGNALS, chat(SYSTEM, "x")))
    assert sorted(order) == sorted(t.id for t in CANDS)
    assert ids(s.order(CANDS, NO_SIGNALS, chat(SYSTEM, "x"))) == order


def test_heavier_deployments_take_more_keys() -> None:
    cands = [target("big", 3.0), target("small", 1.0)]
    s = PrefixAffinity()
    homes = Counter(s.order(cands, NO_SIGNALS, chat(SYSTEM, f"u{i}"))[0].id for i in range(2000))
    assert 0.68 < homes["big"] / 2000 < 0.82


def test_key_uses_session_then_system_and_first_user_then_prompt() -> None:
    assert affinity_key(chat("sys", "u", session="abc")) == b"s\x00abc"
    k1 = affinity_key(chat("sys", "first"))
    later = chat("sys", "first")
    later.body["messages"].append({"role": "assistant", "content": "reply"})
    assert affinity_key(later) == k1
    assert affinity_key(chat("other sys", "first")) != k1
    parts = chat("sys", "")
    parts.body["messages"][1]["content"] = [{"type": "text", "text": "first"},
                                            {"type": "image_url", "image_url": {"url": "x"}}]
    assert affinity_key(parts) == k1
    assert affinity_key(completion([1, 2, 3])) != affinity_key(completion("1,2,3"))


def test_load_factor_at_or_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        PrefixAffinity(load_factor=1.0)
