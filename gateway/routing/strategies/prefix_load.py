"""`prefix-load`: the deployment where this request should start soonest, counting both the
prefill its cached prefix saves and the work already queued there.

Each candidate is scored in prompt tokens, lower first:

    score = uncached prompt tokens                       (prefill still to do there)
          + QUEUE_TOKENS × outstanding                   (requests ahead of it)
          + KV_TOKENS × KV use above KV_KNEE, scaled     (admission waits on a full cache)

- The cached prefix is estimated from this gateway's own routing history
  (`gateway.routing.prefix_index`): the prompt's leading chunks already sent there, within an
  LRU bounded by the tokens the backend's cache holds (`cache_tokens`).
- Outstanding is in-flight + the backend's scraped queue (`strategies.pool.outstanding`),
  **plus the picks this strategy made against the same signals snapshot**. An attempt counts
  in flight only once it starts; requests planned before that (a burst planned together, or
  held between plan and attempt) would all see the same idle deployment and herd onto it.
  `SignalCollector` rebuilds its snapshot after every `begin`/`end`, so a new snapshot object
  already counts the earlier picks that started, and the own count starts again from zero.
- A **session** (`Call.session`, chosen per model by `session_key`) counts as cached where
  its last request went, as far as that request's prompt: for a conversation whose history
  the prompt does not repeat (a Responses API backend keeping it by `previous_response_id`).
- Ties: the deployments scoring within `TIE_TOKENS` of the best are tied. Two drawn at random
  from them are compared (power of two choices): the less busy wins, then the one this
  strategy picked less recently — in-flight counts do not show that a deployment picked a
  moment ago is still prefilling, and in the simulator random ties alone cost the
  `single-turn` family 3 ms of TTFT p99 against least-busy's rotation. An idle pool, or a
  prompt cached everywhere, spreads instead of piling onto the first in the list.

The rest of the order (fallbacks) is by score.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import Signals
from gateway.routing.prefix_index import PrefixIndex, fingerprints
from gateway.routing.strategies.pool import routable

QUEUE_TOKENS = 512
"""Prompt tokens one request ahead is worth. A hit must save more prefill than this per
extra request queued on its backend to win. Chosen on the simulator's tuning seeds only
(docs/routing.md, "Workload families"): 1024 and 2048 left `single-turn` unchanged and cost
`chat-short` 4-12 ms of p50 and `rag` 10-16x its p99, as conversations and documents left the
backend holding them."""
TIE_TOKENS = 128
"""Scores this close to the best are tied and broken at random (power of two choices). 600
(about one request) raised `chat-short` TTFT from 27/140 to 33/171 ms (p50/p99) on the tuning
seeds: near-ties moved conversations off their backend."""
KV_KNEE = 0.9
"""KV-cache use past which a backend may have to wait for blocks before admitting a request."""
KV_TOKENS = 4096
"""Penalty at 100 % KV use, growing linearly from `KV_KNEE`."""
CACHE_TOKENS = 131_072
"""Prefix-cache tokens assumed per backend when its scrape does not say (~1.6 GB of KV for
an 8B model: a small GPU's share after weights)."""
MAX_SESSIONS = 65_536
"""Sessions remembered (least recently used forgotten first)."""
MAX_UNSEEN = 64
"""Own picks counted against one snapshot at most; then the count restarts (a router without
live signals hands the same empty snapshot to every call)."""


class PrefixLoad:
    """Estimated cached prefix against load, ties by power of two choices."""

    def __init__(self, seed: int | None = None, *, queue_tokens: float = QUEUE_TOKENS,
                 tie_tokens: float = TIE_TOKENS, kv_knee: float = KV_KNEE,
                 kv_tokens: float = KV_TOKENS, cache_tokens: int = CACHE_TOKENS) -> None:
        self._rng = random.Random(seed)
        self._queue = queue_tokens
        self._tie = tie_tokens
        self._kv_knee = kv_knee
        self._kv = kv_tokens
        self._index = PrefixIndex(cache_tokens)
        self._snapshot: Signals | None = None
        self._unseen: dict[str, int] = {}  # own picks made against `_snapshot`
        self._unseen_total = 0
        self._sessions: OrderedDict[str, tuple[str, int]] = OrderedDict()  # -> (id, tokens)
        self._last: dict[str, int] = {}  # deployment -> tick it was last picked
        self._tick = 0

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        live = routable(candidates)
        if not live:
            return live
        fps, tokens, replies = fingerprints(call.body)
        prompt = sum(tokens)
        ids = [t.id for t in live]  # a property chain: read once per decision
        cached = self._index.matched(fps, tokens, set(ids), replies) if len(live) > 1 else {}
        session = call.session
        if session:
            last = self._sessions.get(session)
            if last is not None and last[1] > cached.get(last[0], 0):
                cached[last[0]] = last[1]
        if signals is not self._snapshot or self._unseen_total >= MAX_UNSEEN:
            self._snapshot = signals
            self._unseen.clear()
            self._unseen_total = 0
        unseen = self._unseen
        queue, knee, kv_weight = self._queue, self._kv_knee, self._kv
        scores: list[tuple[float, int, int]] = []  # (score, outstanding, index in live)
        for i, did in enumerate(ids):
            ld = signals.load(did)
            busy = ld.in_flight + (ld.waiting or 0) + unseen.get(did, 0)
            score = prompt - cached.get(did, 0) + queue * busy
            kv = ld.kv_cache_usage
            if kv is not None and kv > knee:
                score += kv_weight * (kv - knee) / (1.0 - knee)
            scores.append((score, busy, i))
        scores.sort()
        limit = scores[0][0] + self._tie
        tied = 1
        while tied < len(scores) and scores[tied][0] <= limit:
            tied += 1
        pick = 0
        if tied > 1:  # power of two choices among the tied: the better of two random ones
            a = self._rng.randrange(tied)
            b = self._rng.randrange(tied - 1)
            b += b >= a
            recency = self._last
            pick = min(a, b, key=lambda k: (scores[k][1], recency.get(ids[scores[k][2]], -1)))
        chosen = scores[pick][2]
        did = ids[chosen]
        self._tick += 1
        self._last[did] = self._tick
        unseen[did] = unseen.get(did, 0) + 1
        self._unseen_total += 1
        self._index.record(did, fps, tokens, signals.load(did).cache_tokens)
        if session:
            self._sessions[session] = (did, prompt)
            self._sessions.move_to_end(session)
            if len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return [live[chosen], *(live[s[2]] for k, s in enumerate(scores) if k != pick)]
