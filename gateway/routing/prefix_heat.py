"""Hot prefixes: the cached prefixes so many of `prefix-load`'s recent prompts start with that
every candidate would keep its copy warm, so the decision should balance load and not stick
to the few deployments the index knows hold them.

A prefix the index knows on a few deployments only wins there until they are several
requests busier (the queue weight is learnt low, about what a prompt prefills). For a
system prompt shared by every request (the simulator's `single-turn` family: 8 prompts of
1-2k tokens) each one then lives on 1-6 of the 8 backends, and its requests queue there
while others are idle: TTFT p99 48 ms on the tuning seeds against least-busy's 45. Held
everywhere, the prefix term no longer discriminates and the decision is load with random
ties. Spreading costs one miss per deployment that did not hold it, and is worth it only
if the copy is read again before the backend evicts it, and if every hot prefix fits in
every cache at once:

    share × cache tokens / mean prefill ≥ `HOT_REFRESHES`
    and prefix tokens ≤ `HOT_REFRESHES` × mean prefill

A deployment's cache turns over about every (cache tokens / mean prefill) of its own
requests, and a prefix with `share` of the pool's decisions, spread evenly, comes back to
each deployment `share` × that many times in one turn-over. A RAG document (1/150 of the
decisions, 6k tokens, caches holding a fifth of them) is far below; a conversation's history
is one conversation's, never hot; a shared system prompt is. Shares add up to at most 1,
so at most cache / (`HOT_REFRESHES` × mean prefill) prefixes pass the first test, and with
the second they need one cache at most together.

A prefix is keyed by its first fingerprint and its cached length in tokens: what the
index holds of a prompt is a head of it, so that pair names the head (two conversations on
one system prompt with histories of the same estimated length share a key, and only
overstate its share a little). The share is counted over decisions, not time: a strategy
has no clock, and the cache's turn-over is in decisions too.
"""

from __future__ import annotations

from collections.abc import Sequence

HOT_REFRESHES = 64.0
"""How many times, spread evenly, a prefix must come back to each deployment within one
turn-over of its cache to count as hot. Chosen on the simulator's tuning seeds only
(docs/routing.md, `prefix-load`): 4 and 8 made `rag`'s documents hot (TTFT p99 42 -> 687
and 419 ms), so at least 4x 8; 32 cost `flood` 7 ms of p99 (166 against 159 ms off); 64
changed no family for the worse and took `single-turn`'s p99 from 48.3 to 46.3 ms
(least-busy 45)."""
HEAT_WINDOW = 1024
"""Decisions between two halvings of every count: shares are of the last few thousand."""


class PrefixHeat:
    """Decayed counts of the decisions' longest cached prefixes (`hot` once per decision).
    Per strategy instance: a policy reload starts it again, and ~1,000 decisions relearn it."""

    __slots__ = ("_counts", "_since", "_total", "refreshes")

    def __init__(self, refreshes: float = HOT_REFRESHES) -> None:
        self.refreshes = refreshes
        """`HOT_REFRESHES`; 0: nothing is ever hot."""
        self._counts: dict[tuple[int, int], float] = {}
        self._total = 0.0
        self._since = 0

    def hot(self, first: int, cached: int, prefill: float | None,
            caches: Sequence[int | None], default: int) -> bool:
        """Count one decision whose longest cached prefix is `cached` tokens of a prompt
        starting with fingerprint `first`; True if that prefix is hot. `prefill`: the mean
        tokens recent decisions had to prefill (None: not learnt yet, nothing is hot);
        `caches`: the candidates' cache sizes (None: not scraped, `default`), of which the
        smallest counts."""
        counts = self._counts
        key = (first, cached)
        c = counts.get(key, 0.0) + 1.0
        counts[key] = c
        self._total += 1.0
        self._since += 1
        if self._since >= HEAT_WINDOW:
            self._decay()
        if not self.refreshes or not prefill or cached > self.refreshes * prefill:
            # Longer than `refreshes` mean prefills: not hot however popular. At most
            # cache / (refreshes × prefill) prefixes can have the share below, so hot ones
            # of at most refreshes × prefill tokens fit in one cache together; longer ones
            # (a handful of 6k-token documents over short questions) could not all be held
            # everywhere and would thrash.
            return False
        # Until a full window is seen, the share is of a window: a few first decisions
        # alone do not make a prefix hot.
        total = self._total if self._total > HEAT_WINDOW else float(HEAT_WINDOW)
        need = self.refreshes * prefill * total
        # The first candidate's cache is at least the smallest: most prefixes are rejected
        # by it without a pass over every candidate.
        if c * (caches[0] or default) < need:
            return False
        return c * min([x or default for x in caches]) >= need

    def _decay(self) -> None:
        # A prefix counted once in a window is dropped: a conversation's heads are seen
        # once each, and would otherwise accumulate.
        self._since = 0
        self._total /= 2.0
        self._counts = {k: v / 2.0 for k, v in self._counts.items() if v >= 2.0}
