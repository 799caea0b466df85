"""`prefix-load`: the deployment where this request should start soonest, counting both the
prefill its cached prefix saves and the work already queued there.

Each candidate is scored in prompt tokens, lower first:

    score = uncached prompt tokens                       (prefill still to do there)
          + queue weight × outstanding                   (requests ahead of it)
          + KV_TOKENS × KV use above KV_KNEE, scaled     (admission waits on a full cache)

- The cached prefix is estimated from this gateway's own routing history
  (`gateway.routing.prefix_index`): the prompt's leading chunks already sent there, within an
  LRU bounded by the tokens the backend's cache holds (`cache_tokens`).
- The queue weight is what one request ahead delays this one by: `QUEUE_SHARE` of the
  uncached prefill of this strategy's recent picks (an EWMA), at most `QUEUE_TOKENS`.
- Outstanding is in-flight + the backend's scraped queue (`strategies.pool.outstanding`),
  **plus the picks this strategy made against the same signals snapshot**. An attempt counts
  in flight only once it starts; requests planned before that (a burst planned together, or
  held between plan and attempt) would all see the same idle deployment and herd onto it.
  `SignalCollector` rebuilds its snapshot after every `begin`/`end`, so a new snapshot object
  already counts the earlier picks that started, and the own count starts again from zero.
- A **hot** prefix (`gateway.routing.prefix_heat`: so large a share of recent prompts start
  with it that every candidate would keep a copy warm) counts as cached on every candidate,
  so load decides: held by the few the index knows, a shared system prompt queued there.
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

Decision time (`python -m bench.routing_decision`, docs/routing.md "Decision time"): what
depends only on the candidate list (ids, index bits) is cached per list, found by identity of
the router's tuple; what depends only on the signals snapshot (each candidate's load score,
own picks added as they are made) per snapshot; a long message's fingerprints per message
(`prefix_index.Fingerprints`); the index is bisected rather than walked per chunk; and the
pick's record (with its eviction) is applied after the decision (`PrefixIndex.record_later`),
not inside it, the next decision seeing the same index either way. The random draws are
`random.Random.randrange`'s own, so a seed makes the same choices.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from operator import add, itemgetter

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals
from gateway.routing.prefix_heat import HOT_REFRESHES, PrefixHeat
from gateway.routing.prefix_index import PrefixIndex, fingerprint_parts
from gateway.routing.strategies.pool import routable

QUEUE_TOKENS = 512
"""Prompt tokens one request ahead is worth at most, and before anything is learnt (see
`QUEUE_SHARE`). A hit must save more prefill than this per extra request queued on its
backend to win. Chosen on the simulator's tuning seeds only (docs/routing.md, "Workload
families"): as a fixed weight, 1024 and 2048 left `single-turn` unchanged and cost
`chat-short` 4-12 ms of p50 and `rag` 10-16x its p99, as conversations and documents left the
backend holding them."""
QUEUE_SHARE = 0.75
"""One request ahead is worth this share of the prefill the requests routed lately needed
(an EWMA of each prompt minus the longest prefix any candidate held), within [`QUEUE_MIN`,
`QUEUE_TOKENS`]; `TIE_TOKENS` is scaled with it. What
a queued request delays the next one by is mostly its own prefill, and that depends on the
workload: ~150 tokens for a chat turn whose history is cached, ~500 for a single turn with
new text. A fixed 512 moved conversations whose new history was shorter than one request's
worth, and with several gateway replicas, which see each other's in-flight counts up to
`shared_view.INTERVAL_S` old, an error of one request moved them: four replicas sharing
every 0.25 s gave `chat-short` 39/224 ms (TTFT p50/p99, tuning seed 1) against 27/144 ms for
one. A fixed 128 fixed that (25/99 against 25/95 ms) but raised `flood`'s p99 from 163 to
183 ms; learnt with this share, tuning seeds 1 and 2 pooled: `chat-short` 24/103 ms with one
replica and 25/102 with four, `flood` 48/159 ms; `single-turn`'s p99 47 → 48 ms is the cost
(1.0: 47.7 ms, but four replicas 25/107 against 25/98). 0 keeps `queue_tokens` fixed."""
QUEUE_MIN = 64
"""The least a request ahead is worth however cheap recent prefills were."""
QUEUE_ALPHA = 0.05
"""Weight of the newest pick in the prefill average (~20 picks)."""
QUEUE_STEP = 0.125
"""The weight in use moves to the learnt one at a snapshot change, once they differ by
more than this share: each move re-scores every candidate, so not on every pick."""
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
MAX_SPOTS = 1024
"""Index masks whose candidate places a pool remembers (`_Pool.places`); past that they are
worked out each time."""


_IDLE = EndpointLoad()


class _Pool:
    """One candidate list, as far as it does not change between decisions: the routable
    targets, their ids and their bits in the prefix index. Holding `candidates` keeps those
    objects alive, so the `id()`s keying the cache cannot be reused while it is cached."""

    __slots__ = ("at", "bits", "candidates", "ids", "index", "key", "live", "mask", "order",
                 "spots")

    def __init__(self, key: tuple[int, ...], candidates: Sequence[Target],
                 index: PrefixIndex) -> None:
        self.key = key
        self.candidates = tuple(candidates)
        self.index = index
        self.live = routable(candidates)
        self.ids = [t.id for t in self.live]
        self.at = {did: i for i, did in enumerate(self.ids)}
        self.bits = {index.bit(did): i for i, did in enumerate(self.ids)}
        self.mask = index.mask(self.ids)
        # Copied and sorted in place by each decision: a copy of a list is ~2k instructions
        # cheaper than `sorted(range(n))` building one from a range.
        self.order = list(range(len(self.ids)))
        self.spots: dict[int, tuple[int, ...]] = {}  # an index mask -> its candidates' places

    def places(self, mask: int) -> tuple[int, ...]:
        """The places in `live` of a mask's deployments, remembered: the few masks a pool's
        prompts are held by recur, and peeling bits off one costs ~20 bytecodes a bit."""
        out = []
        bits = self.bits
        rest = mask
        while rest:
            low = rest & -rest
            rest ^= low
            i = bits.get(low)
            if i is not None:
                out.append(i)
        at = tuple(out)
        if len(self.spots) < MAX_SPOTS:
            self.spots[mask] = at
        return at


class _Loads:
    """A pool's load scores against one signals snapshot: QUEUE_TOKENS × outstanding + the
    KV penalty (`raw`), and outstanding; `base` and `busy` add the own picks as they are
    made. Built from the previous snapshot's where a deployment's `EndpointLoad` is the same
    object (`SignalCollector` rebuilds only the deployments that changed); a new queue weight
    re-scores every deployment from the outstanding counts and KV penalties kept (`pens`)."""

    __slots__ = ("base", "busy", "caps", "lds", "pens", "queue", "raw", "raw_busy", "serial",
                 "signals")
    raw: list[float]
    pens: list[float]
    raw_busy: list[int]
    caps: list[int | None]
    lds: list[EndpointLoad | None]
    base: list[float]
    busy: list[int]

    def __init__(self, pool: _Pool, signals: Signals, queue: float, knee: float,
                 kv_weight: float, prev: _Loads | None) -> None:
        get = signals.loads.get
        n = len(pool.ids)
        self.serial = signals.serial
        self.signals = signals
        self.queue = queue
        if prev is not None:  # same pool: same length. Taken over, not copied: a pool's
            # loads against an earlier snapshot are only ever read to build these.
            raw, raw_busy, caps, pens = prev.raw, prev.raw_busy, prev.caps, prev.pens
            old = lds = prev.lds
        else:
            raw, raw_busy, caps, lds = [0.0] * n, [0] * n, [None] * n, [None] * n
            pens = [0.0] * n
            old = lds.copy()
        ids = pool.ids
        todo: Iterable[int | None] = range(n)
        if prev is not None and prev.signals is signals:
            # The own-pick count restarting against the same snapshot (`MAX_UNSEEN`), which
            # is not changed once handed out: every load is prev's. Not re-reading 16 of
            # them matters, as 1 decision in 64 is past the p99.
            todo = ()
        elif prev is not None and signals.since and signals.since == prev.serial:
            # Only these may be new objects; the others are prev's. (A None is a deployment
            # not in this pool: not filtered in a comprehension, whose frame costs more.)
            todo = map(pool.at.get, signals.changed)
        for i in todo:
            if i is None:
                continue
            did = ids[i]
            ld = get(did, _IDLE)
            if ld is old[i]:
                continue
            lds[i] = ld
            b = ld.in_flight + (ld.waiting or 0)
            kv = ld.kv_cache_usage
            pen = kv_weight * (kv - knee) / (1.0 - knee) if kv is not None and kv > knee else 0.0
            raw[i] = queue * b + pen  # + 0.0 changes no float here (queue * b >= 0)
            raw_busy[i] = b
            pens[i] = pen
            caps[i] = ld.cache_tokens
        if prev is not None and prev.queue != queue:  # a new weight: every score, in C
            raw = list(map(add, map(queue.__mul__, raw_busy), pens))
        self.raw, self.raw_busy, self.caps, self.lds, self.pens = raw, raw_busy, caps, lds, pens
        self.base, self.busy = raw.copy(), raw_busy.copy()


class PrefixLoad:
    """Estimated cached prefix against load, ties by power of two choices."""

    def __init__(self, seed: int | None = None, *, queue_tokens: float = QUEUE_TOKENS,
                 tie_tokens: float = TIE_TOKENS, kv_knee: float = KV_KNEE,
                 kv_tokens: float = KV_TOKENS, cache_tokens: int = CACHE_TOKENS,
                 queue_share: float = QUEUE_SHARE,
                 hot_refreshes: float = HOT_REFRESHES) -> None:
        self._rng = random.Random(seed)
        # Floats, so every score is one and sorting them takes CPython's float fast path.
        self._queue = float(queue_tokens)
        self._queue_max = float(queue_tokens)
        self._queue_share = queue_share
        self._prefill: float | None = None  # EWMA of the uncached prompt tokens of own picks
        self._tie_max = tie_tokens
        self._tie = float(tie_tokens)  # scaled with the queue weight: the same share of a request
        self._kv_knee = kv_knee
        self._kv = kv_tokens
        self._cache_tokens = cache_tokens
        self._heat = PrefixHeat(hot_refreshes)  # prefixes worth holding everywhere
        # Used when the signals carry no index (`Signals.prefixes`: the process-wide one,
        # shared with other replicas when `state.redis_url` is set).
        self._index = PrefixIndex(cache_tokens)
        self._pools: dict[tuple[int, ...], _Pool] = {}
        self._by_tuple: dict[int, _Pool] = {}  # id() of a candidates tuple -> its pool
        self._snapshot: Signals | None = None
        # Per pool (hashed by identity: a key of 16 ids costs ~700 instructions to hash).
        self._loads: dict[_Pool, _Loads] = {}  # against `_snapshot`
        self._previous: dict[_Pool, _Loads] = {}  # against the snapshot before
        self._unseen_total = 0  # own picks made against `_snapshot`
        self._sessions: OrderedDict[str, tuple[str, int]] = OrderedDict()  # -> (id, tokens)
        self._last: dict[str, int] = {}  # deployment -> tick it was last picked
        self._tick = 0

    def _pool(self, candidates: Sequence[Target], index: PrefixIndex) -> _Pool:
        # The router hands the same tuple for a model while none of its deployments is
        # cooling down: one identity check instead of a key of 16 `id()`s. A tuple cannot
        # change behind the cache's back, and the pool holds it, so its id is not reused.
        if type(candidates) is tuple:
            pool = self._by_tuple.get(id(candidates))
            if pool is not None and pool.candidates is candidates and pool.index is index:
                return pool
        key = tuple(map(id, candidates))
        pool = self._pools.get(key)
        if pool is None or pool.index is not index:
            if len(self._pools) >= 256:  # candidate lists change on cooldowns and reloads
                # Forget them, but for those counting own picks against this snapshot.
                self._pools = {p.key: p for p in self._loads}
                self._by_tuple.clear()
            pool = self._pools[key] = _Pool(key, candidates, index)
        if type(candidates) is tuple:
            pool.candidates = candidates
            self._by_tuple[id(candidates)] = pool
        return pool

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        index = signals.prefixes if signals.prefixes is not None else self._index
        pool = self._pool(candidates, index)
        live = pool.live
        if not live:
            return []
        if signals is not self._snapshot or self._unseen_total >= MAX_UNSEEN:
            self._snapshot = signals
            pools = self._pools
            # A new queue weight (`_requeue`) changes every score; `_Loads` sees it.
            self._requeue()
            self._previous = {p: v for p, v in self._loads.items() if pools.get(p.key) is p}
            self._loads = {}
            self._unseen_total = 0
        loads = self._loads.get(pool)
        if loads is None:
            loads = self._loads[pool] = _Loads(pool, signals, self._queue, self._kv_knee,
                                               self._kv, self._previous.get(pool))
        fps, tokens, replies = fingerprint_parts(call.body, cache=index.prompts)
        base = loads.base
        scores = base.copy()  # lower is better; the prompt's length is the same for all
        n = len(scores)
        best = 0  # the longest cached prefix of any candidate
        if n > 1:
            spots = pool.spots
            for mask, cached in index.groups(fps, tokens, pool.mask, replies):
                best = cached  # the groups come shortest first
                at = spots.get(mask)
                if at is None:
                    at = pool.places(mask)
                for i in at:
                    scores[i] -= cached  # a float minus an int stays a float
            if best and self._heat.hot(fps[0], best, self._prefill, loads.caps,
                                       self._cache_tokens):
                # Hot (`prefix_heat`): every candidate counts as holding it, so load decides
                # and a deployment that lacks it pays one miss and holds it from then on.
                scores = [b - best for b in base]
        session = call.session
        if session:
            last = self._sessions.get(session)
            if last is not None:
                i = pool.at.get(last[0], -1)
                if i >= 0 and base[i] - last[1] < scores[i]:
                    scores[i] = base[i] - last[1]
                    best = max(best, last[1])
        ranked = pool.order.copy()
        ranked.sort(key=scores.__getitem__)
        limit = scores[ranked[0]] + self._tie
        tied = 1
        while tied < n and scores[ranked[tied]] <= limit:
            tied += 1
        pick = 0
        ids = pool.ids
        if tied > 1:  # power of two choices among the tied: the better of two random ones
            a = self._below(tied)
            b = self._below(tied - 1)
            b += b >= a
            busy, recency = loads.busy, self._last
            ia, ib = ranked[a], ranked[b]
            pick = a if (busy[ia], recency.get(ids[ia], -1)) <= (
                busy[ib], recency.get(ids[ib], -1)) else b
        chosen = ranked.pop(pick)
        did = ids[chosen]
        total = sum(tokens)
        if self._queue_share and n > 1:
            # What this prompt must prefill at best, wherever it went: the uncached part
            # where it went would feed back (a conversation moved by a stale count raises
            # the weight of load, which moves more of them).
            uncached = total - best
            prefill = self._prefill
            self._prefill = uncached if prefill is None else (
                prefill + QUEUE_ALPHA * (uncached - prefill))
        self._tick += 1
        self._last[did] = self._tick
        self._count_pick(did)
        # Applied once the request has gone on (or at the index's next read): the record
        # and its eviction are not this request's to wait for.
        index.record_later(did, fps, tokens, loads.caps[chosen])
        if session:
            sessions = self._sessions
            sessions[session] = (did, total)
            sessions.move_to_end(session)
            if len(sessions) > MAX_SESSIONS:
                sessions.popitem(last=False)
        if n == 1:
            return [live[chosen]]
        return [live[chosen], *itemgetter(*ranked)(live)] if n > 2 else [
            live[chosen], live[ranked[0]]]

    def _requeue(self) -> bool:
        """Move the weight of a request ahead to the learnt one (`QUEUE_SHARE`) if it is more
        than `QUEUE_STEP` away; True if it moved."""
        if self._prefill is None:
            return False
        target = self._queue_share * self._prefill
        target = QUEUE_MIN if target < QUEUE_MIN else min(target, self._queue_max)
        if abs(target - self._queue) <= QUEUE_STEP * self._queue:
            return False
        self._queue = float(target)
        self._tie = self._tie_max * target / self._queue_max
        return True

    def _below(self, n: int) -> int:
        """`random.Random.randrange(n)`, draw for draw (CPython's `_randbelow`), without its
        argument checks and two Python frames: the same seed makes the same choices."""
        k = n.bit_length()
        getrandbits = self._rng.getrandbits
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return r

    def _count_pick(self, did: str) -> None:
        """Count an own pick against the current snapshot, in every pool that has `did`."""
        self._unseen_total += 1
        queue = self._queue
        for pool, loads in self._loads.items():  # only pools still cached are in it
            i = pool.at.get(did)
            if i is not None:
                loads.base[i] += queue
                loads.busy[i] += 1
