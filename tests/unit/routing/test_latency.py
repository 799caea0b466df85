from __future__ import annotations

from collections import Counter

from gateway.routing.base import EndpointLoad
from gateway.routing.strategies.latency import LowestLatency
from tests.unit.routing.targets import chat, ids, signals, target

CANDS = [target("fast"), target("slow")]


def test_lowest_smoothed_latency_first_when_idle() -> None:
    sig = signals(fast=EndpointLoad(latency_ewma_s=0.5), slow=EndpointLoad(latency_ewma_s=2.0))
    assert ids(LowestLatency().order(CANDS, sig, chat())) == ["fast", "slow"]


def test_streaming_calls_rank_by_time_to_first_token() -> None:
    # fast finishes sooner overall, but slow starts streaming sooner.
    sig = signals(fast=EndpointLoad(latency_ewma_s=1.0, ttft_ewma_s=0.8),
                  slow=EndpointLoad(latency_ewma_s=3.0, ttft_ewma_s=0.1))
    assert ids(LowestLatency().order(CANDS, sig, chat(stream=True))) == ["slow", "fast"]
    assert ids(LowestLatency().order(CANDS, sig, chat(stream=False))) == ["fast", "slow"]


def test_queue_on_the_fast_one_sends_traffic_to_the_slower_idle_one() -> None:
    sig = signals(fast=EndpointLoad(in_flight=2, waiting=3, latency_ewma_s=0.5),
                  slow=EndpointLoad(latency_ewma_s=2.0))
    # fast: 0.5 × (1 + 5) = 3.0 > slow: 2.0
    assert ids(LowestLatency().order(CANDS, sig, chat())) == ["slow", "fast"]


def test_unknown_idle_endpoints_are_explored_first() -> None:
    cands = [target("known"), target("new")]
    sig = signals(known=EndpointLoad(latency_ewma_s=0.01))
    assert ids(LowestLatency().order(cands, sig, chat())) == ["new", "known"]


def test_an_unknown_endpoint_already_being_explored_is_costed_at_the_known_mean() -> None:
    cands = [target("a"), target("b"), target("new")]
    sig = signals(a=EndpointLoad(latency_ewma_s=1.0), b=EndpointLoad(latency_ewma_s=3.0),
                  new=EndpointLoad(in_flight=1))
    # new: mean 2.0 × (1 + 1) = 4.0, behind both known idle ones.
    assert ids(LowestLatency().order(cands, sig, chat())) == ["a", "b", "new"]


def test_several_unknown_idle_endpoints_are_explored_in_turn() -> None:
    cands = [target("x"), target("y"), target("z")]
    strategy = LowestLatency()
    firsts = Counter(strategy.order(cands, signals(), chat())[0].id for _ in range(30))
    assert firsts == {"x": 10, "y": 10, "z": 10}


def test_ties_in_cost_rotate() -> None:
    cands = [target("a"), target("b")]
    sig = signals(a=EndpointLoad(latency_ewma_s=1.0), b=EndpointLoad(latency_ewma_s=1.0))
    strategy = LowestLatency()
    assert [strategy.order(cands, sig, chat())[0].id for _ in range(4)] == ["a", "b", "a", "b"]
