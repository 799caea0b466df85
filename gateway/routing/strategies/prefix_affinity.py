"""`prefix-affinity`: send requests that share a prompt prefix to the same deployment, so the
backend's prefix cache (vLLM automatic prefix caching) holds it and only the new suffix is
prefilled — consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018,
https://arxiv.org/abs/1608.01350).

The affinity key is the session (`Call.session`: the OpenAI `user` field or `x-session-id`) when
given, else a hash of the prompt's head: the first `prefix_chars` characters of the system
prompt and of the first user message (the parts every turn of one conversation repeats), or of
a completions `prompt`. A conversation's later turns thus land where its earlier turns are
cached, and different conversations spread over the ring.

The key is placed on a hash ring (`vnodes` points per deployment per unit of weight) and the
first deployment clockwise takes it unless it is over its bound: more outstanding requests than
`load_factor` × its weighted share of the pool's total (+1 for this request), or a reported
queue longer than `max_waiting`. Then the walk continues clockwise. The bound keeps a hot key or
an unlucky ring from queueing one backend while others idle; with `load_factor` > 1 some
deployment is always under its bound, so the walk ends. The rest of the order follows the ring,
so the first fallback is the same for every request of a key too.

Ring positions are blake2b digests of the deployment id, not Python's salted `hash()`: every
gateway replica must map a key to the same deployment, and a deployment leaving the candidate
list (cooldown) moves only its own keys.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import Signals
from gateway.routing.prefix_index import message_text
from gateway.routing.strategies.pool import outstanding, routable

LOAD_FACTOR = 2.0
"""c in the paper: a deployment takes a key while its load is below c × its fair share.
The paper's 1.25 suits caches whose cost is the request count; a batching LLM server starts one
more request almost for free while a prefix-cache miss costs a full prefill, so the bound is
looser. In the simulator (docs/routing.md) 1.25 moved 18% of turns off their home at 70% load,
cost 6 points of hit rate and raised TTFT p99 from 214 to 250 ms against 2.0."""
MAX_WAITING = 16
"""Reported queue length past which a deployment is walked past even when under its bound.
Not lower: the queue comes from a scrape up to `metrics_stale_s` old, and every request walking
past a backend on a stale number misses its cache (in the simulator at 110% load, 2 made TTFT
p90 fifteen times that of 16)."""
PREFIX_CHARS = 1024
"""Characters of the system prompt and of the first user message in the key (~256 tokens)."""
VNODES = 160
"""Ring points per deployment of weight 1 (spread within a few percent for 4-16 deployments)."""
_MAX_VNODES = 4096


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def affinity_key(call: Call, prefix_chars: int = PREFIX_CHARS) -> bytes:
    """The bytes hashed onto the ring for this call."""
    if call.session:
        return b"s\x00" + call.session.encode()
    body = call.body
    messages = body.get("messages")
    if isinstance(messages, list):
        system = user = ""
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            if not system and role in ("system", "developer"):
                system = message_text(m.get("content"))[:prefix_chars]
            elif role == "user":
                user = message_text(m.get("content"))[:prefix_chars]
                break
        return b"m\x00" + system.encode() + b"\x00" + user.encode()
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]  # a batch: its first prompt; token-id prompts are lists of int
    if isinstance(prompt, str):
        return b"p\x00" + prompt[:prefix_chars].encode()
    if isinstance(prompt, list):  # token ids: ~4 characters per token
        return b"t\x00" + ",".join(map(str, prompt[: prefix_chars // 4])).encode()
    return b"p\x00" + (str(prompt)[:prefix_chars] if prompt is not None else "").encode()


class _Ring:
    __slots__ = ("ids", "points")

    def __init__(self, members: Sequence[tuple[str, float]], vnodes: int) -> None:
        pairs: list[tuple[int, str]] = []
        for did, weight in members:
            n = min(_MAX_VNODES, max(1, round(vnodes * weight)))
            pairs.extend((_digest(f"{did}#{i}".encode()), did) for i in range(n))
        pairs.sort()
        self.points = [p for p, _ in pairs]
        self.ids = [d for _, d in pairs]

    def walk(self, key: int, wanted: int) -> list[str]:
        """Distinct ids clockwise from `key`, until `wanted` of them are found."""
        seen: dict[str, None] = {}
        n = len(self.ids)
        start = bisect.bisect_left(self.points, key)
        for i in range(n):
            did = self.ids[(start + i) % n]
            if did not in seen:
                seen[did] = None
                if len(seen) == wanted:
                    break
        return list(seen)


class PrefixAffinity:
    """Consistent hashing of the prompt head with bounded loads."""

    def __init__(self, seed: int | None = None, *, load_factor: float = LOAD_FACTOR,
                 max_waiting: int = MAX_WAITING, prefix_chars: int = PREFIX_CHARS,
                 vnodes: int = VNODES) -> None:
        if load_factor <= 1.0:
            raise ValueError(f"load_factor must be above 1 (got {load_factor}): at 1 every "
                             "deployment must be exactly at its share and keys stop sticking")
        # seed is unused: the mapping must be the same on every replica.
        self._c = load_factor
        self._max_waiting = max_waiting
        self._prefix_chars = prefix_chars
        self._vnodes = vnodes
        # One ring per candidate set; sets change only on cooldown and reload, so a few.
        self._rings: dict[tuple[tuple[str, float], ...], _Ring] = {}

    def _ring(self, live: list[Target]) -> _Ring:
        members = tuple(sorted((t.id, t.deployment.weight) for t in live))
        ring = self._rings.get(members)
        if ring is None:
            if len(self._rings) >= 64:
                self._rings.clear()
            ring = self._rings[members] = _Ring(members, self._vnodes)
        return ring

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        live = routable(candidates)
        if len(live) < 2:
            return live
        by_id = {t.id: t for t in live}
        ring = self._ring(live)
        walk = [by_id[d] for d in ring.walk(_digest(affinity_key(call, self._prefix_chars)),
                                            len(by_id))]
        loads = {t.id: signals.load(t.id) for t in walk}
        busy = {d: outstanding(ld) for d, ld in loads.items()}
        total_weight = sum(t.deployment.weight for t in walk)
        total_load = sum(busy.values()) + 1  # + this request
        chosen: Target | None = None
        for t in walk:
            bound = math.ceil(self._c * total_load * t.deployment.weight / total_weight)
            waiting = loads[t.id].waiting
            if busy[t.id] + 1 <= bound and (waiting is None or waiting <= self._max_waiting):
                chosen = t
                break
        if chosen is None:  # every one has a long queue: the least loaded, ring order on ties
            chosen = min(walk, key=lambda t: busy[t.id])
        return [chosen, *(t for t in walk if t is not chosen)]
