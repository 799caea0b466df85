from __future__ import annotations

from collections import Counter

from gateway.routing.base import NO_SIGNALS, EndpointLoad
from gateway.routing.strategies.least_busy import LeastBusy
from tests.unit.routing.targets import chat, ids, signals, target

CALL = chat()
CANDS = [target("a"), target("b"), target("c")]


def test_avoids_the_endpoint_with_a_long_reported_queue() -> None:
    sig = signals(a=EndpointLoad(in_flight=1, waiting=12), b=EndpointLoad(in_flight=3, waiting=0),
                  c=EndpointLoad(in_flight=2, waiting=0))
    order = ids(LeastBusy().order(CANDS, sig, CALL))
    assert order == ["c", "b", "a"]


def test_degrades_to_in_flight_counts_when_waiting_is_unknown() -> None:
    sig = signals(a=EndpointLoad(in_flight=5), b=EndpointLoad(in_flight=1),
                  c=EndpointLoad(in_flight=3))
    assert ids(LeastBusy().order(CANDS, sig, CALL)) == ["b", "c", "a"]


def test_an_idle_pool_is_spread_round_robin() -> None:
    strategy = LeastBusy()
    firsts = Counter(strategy.order(CANDS, NO_SIGNALS, CALL)[0].id for _ in range(300))
    assert firsts == {"a": 100, "b": 100, "c": 100}


def test_ties_rotate_among_the_least_busy_only() -> None:
    sig = signals(a=EndpointLoad(in_flight=0), b=EndpointLoad(in_flight=4),
                  c=EndpointLoad(in_flight=0))
    strategy = LeastBusy()
    firsts = Counter(strategy.order(CANDS, sig, CALL)[0].id for _ in range(100))
    assert firsts == {"a": 50, "c": 50}


def test_weight_zero_is_not_returned() -> None:
    order = ids(LeastBusy().order([target("a"), target("off", 0)], NO_SIGNALS, CALL))
    assert order == ["a"]
