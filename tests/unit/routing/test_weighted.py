from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.base import NO_SIGNALS
from gateway.routing.registry import make_strategy
from gateway.routing.strategies.weighted import WeightedRoundRobin
from tests.unit.routing.targets import chat, ids, target

CALL = chat()


@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 1, 1), (3, 2, 0.5), (0.7, 0.2, 0.1, 1.3)])
def test_first_pick_share_within_two_points_of_weight_share_over_10000_calls(
        weights: tuple[float, ...]) -> None:
    cands = [target(f"d{i}", w) for i, w in enumerate(weights)]
    strategy = WeightedRoundRobin(seed=7)
    firsts = Counter(strategy.order(cands, NO_SIGNALS, CALL)[0].id for _ in range(10_000))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(firsts[f"d{i}"] / 10_000 - w / total) <= 0.02, (firsts, weights)


def test_picks_are_spread_not_bunched_like_nginx() -> None:
    cands = [target("a", 5), target("b", 1), target("c", 1)]
    strategy = WeightedRoundRobin()
    seq = [strategy.order(cands, NO_SIGNALS, CALL)[0].id for _ in range(7)]
    assert seq == ["a", "a", "b", "a", "c", "a", "a"]


def test_fallbacks_follow_in_descending_weight_order() -> None:
    cands = [target("small", 1), target("big", 4), target("mid", 2)]
    strategy = WeightedRoundRobin()
    for _ in range(20):
        order = ids(strategy.order(cands, NO_SIGNALS, CALL))
        assert sorted(order) == ["big", "mid", "small"]
        rest = order[1:]
        weights = {"small": 1, "big": 4, "mid": 2}
        assert [weights[r] for r in rest] == sorted((weights[r] for r in rest), reverse=True)


def test_weight_zero_is_never_chosen_nor_returned() -> None:
    cands = [target("on", 1), target("drained", 0), target("also", 2)]
    strategy = WeightedRoundRobin(seed=1)
    for _ in range(300):
        order = ids(strategy.order(cands, NO_SIGNALS, CALL))
        assert "drained" not in order
        assert len(order) == 2


def test_only_weight_zero_candidates_yield_an_empty_order() -> None:
    assert WeightedRoundRobin().order([target("x", 0)], NO_SIGNALS, CALL) == []


def test_same_seed_same_sequence_and_seeds_shift_the_phase() -> None:
    cands = [target("a", 2), target("b", 1), target("c", 1)]

    def run(seed: int | None) -> list[str]:
        s = make_strategy("weighted", seed)
        return [s.order(cands, NO_SIGNALS, CALL)[0].id for _ in range(50)]

    assert run(3) == run(3)
    assert run(None) == run(None)
    assert len({tuple(run(s)) for s in range(10)}) > 1


def test_a_deployment_leaving_and_returning_keeps_the_others_in_proportion() -> None:
    a, b, c = target("a", 1), target("b", 1), target("c", 2)
    strategy = WeightedRoundRobin()
    firsts: Counter[str] = Counter()
    for i in range(4000):
        cands = [a, b, c] if (i // 100) % 2 == 0 else [a, c]  # b flaps in and out of cooldown
        firsts[strategy.order(cands, NO_SIGNALS, CALL)[0].id] += 1
    assert abs(firsts["c"] / firsts["a"] - 2.0) < 0.1
