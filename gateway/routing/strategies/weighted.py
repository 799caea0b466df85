"""`weighted`: smooth weighted round-robin, the algorithm of nginx's upstream module.

Each call adds every candidate's weight to its running score, picks the highest score, and
takes the total weight off the winner. Over any window of `sum(weights)` calls each deployment
is picked exactly in proportion to its weight, and picks are spread (weights 5:1:1 give
a a b a c a a, not a a a a a b c) — unlike a random draw, whose share only converges.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import Signals
from gateway.routing.strategies.pool import routable

# Upper bound of the seeded phase: how many picks a seeded instance skips at start, so that
# replicas with different seeds do not send their first requests to the same deployment.
_MAX_PHASE = 64


class WeightedRoundRobin:
    """Primary pick by smooth weighted round-robin; fallbacks by descending weight."""

    def __init__(self, seed: int | None = None) -> None:
        # Running score per deployment id. Kept for ids that drop out (cooldown) so that their
        # share resumes where it was instead of restarting at zero.
        self._score: dict[str, float] = {}
        self._phase = random.Random(seed).randrange(_MAX_PHASE) if seed is not None else 0

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        live = routable(candidates)
        if len(live) < 2:
            return live
        while self._phase:
            self._phase -= 1
            self._pick(live)
        first = self._pick(live)
        # sorted() is stable: equal weights keep the policy's order.
        rest = sorted((t for t in live if t is not first), key=lambda t: -t.deployment.weight)
        return [first, *rest]

    def _pick(self, live: list[Target]) -> Target:
        total = 0.0
        best: Target = live[0]
        best_score = float("-inf")
        score = self._score
        for t in live:
            w = t.deployment.weight
            total += w
            s = score.get(t.id, 0.0) + w
            score[t.id] = s
            if s > best_score:
                best, best_score = t, s
        score[best.id] = best_score - total
        return best
