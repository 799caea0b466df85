"""A vLLM-like backend: continuous batching, chunked prefill, and an LRU prefix cache of KV
blocks.

Each engine step runs one decode token for every running request plus up to a token budget of
prefill (`max_batched_tokens`), and takes `step_base_s + decode_s × decoding + prefill_s ×
prefill tokens`: the step time grows mildly with the batch and a lot with prefill, so a long
uncached prompt also slows every request decoding beside it. A request's first token comes at
the end of the step that finishes its prefill (as in vLLM).

The KV cache holds `kv_blocks` blocks of `block_tokens`. Full blocks are keyed by a hash chain
over the conversation's segments, so a new prompt hits every leading block some earlier
request computed (its prompt or its generated reply) while it is still cached. Blocks held by
running requests are pinned; freed blocks stay cached and are evicted least recently used,
tail blocks first (vLLM frees a request's blocks in reverse order for that reason). A request is
admitted only when its prompt and whole reply fit; there is no preemption.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendConfig:
    max_batch: int = 48
    """Most requests running at once (vLLM `max_num_seqs`)."""
    max_batched_tokens: int = 4096
    """Tokens per step, decode and prefill together (vLLM `max_num_batched_tokens`)."""
    kv_blocks: int = 10_000
    """KV-cache blocks per backend."""
    block_tokens: int = 16
    """Tokens per KV block (vLLM's default block size)."""
    step_base_s: float = 0.008
    """Fixed cost of one engine step (reading the weights once)."""
    decode_s: float = 0.00015
    """Added per request decoding in the step."""
    prefill_s: float = 0.00006
    """Added per prefilled token (~17k tokens/s)."""


class Request:
    __slots__ = ("arrival", "backend", "finish", "first_token", "hit_tokens", "keys",
                 "measured", "output_tokens", "prompt_tokens", "queued_s", "remaining",
                 "session", "tenant", "turn")

    def __init__(self, session: int, turn: int, arrival: float, prompt_tokens: int,
                 output_tokens: int, keys: list[int], measured: bool,
                 tenant: str = "main") -> None:
        self.session = session
        self.tenant = tenant
        self.turn = turn
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.keys = keys  # full-block keys of prompt + reply
        self.measured = measured
        self.backend = -1
        self.hit_tokens = 0
        self.remaining = 0  # prefill tokens still to compute
        self.first_token = -1.0
        self.finish = -1.0
        self.queued_s = 0.0  # held by flow control before it was routed (bench/sim/flow.py)


class PrefixCache:
    """KV blocks: pinned by running requests, or cached and evictable (LRU)."""

    __slots__ = ("anon", "capacity", "evictable", "refs")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.refs: dict[int, int] = {}  # cached full block -> running requests holding it
        self.evictable: OrderedDict[int, None] = OrderedDict()  # refs == 0, oldest first
        self.anon = 0  # partial (unshareable) tail blocks held by running requests

    def pinned(self) -> int:
        return len(self.refs) - len(self.evictable) + self.anon

    def admit(self, keys: list[int], partial_blocks: int) -> int | None:
        """Pin a request's blocks; returns how many leading blocks were cached, or None when
        they do not fit (nothing is changed then)."""
        refs = self.refs
        hits = 0
        for k in keys:
            if k not in refs:
                break
            hits += 1
        missing = 0
        reused_evictable = 0
        for k in keys:
            r = refs.get(k)
            if r is None:
                missing += 1
            elif r == 0:
                reused_evictable += 1
        need = missing + partial_blocks
        free = self.capacity - len(refs) - self.anon
        if need > free + len(self.evictable) - reused_evictable:
            return None
        evictable = self.evictable
        for k in keys:
            r = refs.get(k)
            if r is None:
                refs[k] = 1
            else:
                if r == 0:
                    del evictable[k]
                refs[k] = r + 1
        # Evict only after pinning this request's own blocks, so none of them is the victim.
        over = len(refs) + self.anon + partial_blocks - self.capacity
        for _ in range(max(0, over)):
            victim, _ = evictable.popitem(last=False)
            del refs[victim]
        self.anon += partial_blocks
        return hits

    def release(self, keys: list[int], partial_blocks: int) -> None:
        refs = self.refs
        evictable = self.evictable
        for k in reversed(keys):  # tail first: it is evicted before the shared head
            r = refs[k] - 1
            refs[k] = r
            if r == 0:
                evictable[k] = None
        self.anon -= partial_blocks


class Backend:
    """One simulated server. The cluster calls `start_step` when it may run and
    `finish_step` when the step's time has passed."""

    def __init__(self, index: int, cfg: BackendConfig) -> None:
        self.index = index
        self.cfg = cfg
        self.cache = PrefixCache(cfg.kv_blocks)
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.decoding: list[tuple[int, int, Request]] = []  # (last step, tiebreak, request)
        self.steps = 0
        self.busy = False
        self._chunks: list[tuple[Request, int]] = []
        self._seq = 0

    @property
    def running(self) -> int:
        return len(self.decoding) + len(self.prefilling)

    def kv_usage(self) -> float:
        return self.cache.pinned() / self.cache.capacity

    def _partial(self, r: Request) -> int:
        total = r.prompt_tokens + r.output_tokens
        return 1 if total % self.cfg.block_tokens else 0

    def start_step(self) -> float | None:
        """Schedule one step; returns its duration, or None when there is nothing to run."""
        cfg = self.cfg
        n_decode = len(self.decoding)
        budget = cfg.max_batched_tokens - n_decode
        chunks = self._chunks
        chunks.clear()
        prefill = 0
        for r in self.prefilling:
            if budget <= 0:
                break
            c = min(r.remaining, budget)
            chunks.append((r, c))
            budget -= c
            prefill += c
        while self.waiting and budget > 0 and self.running < cfg.max_batch:
            r = self.waiting[0]
            hits = self.cache.admit(r.keys, self._partial(r))
            if hits is None:
                break  # KV full: first come, first served, as vLLM's scheduler
            self.waiting.popleft()
            # A full hit still computes the last prompt token, as vLLM does.
            r.hit_tokens = min(hits * cfg.block_tokens, r.prompt_tokens - 1)
            r.remaining = r.prompt_tokens - r.hit_tokens
            self.prefilling.append(r)
            c = min(r.remaining, budget)
            chunks.append((r, c))
            budget -= c
            prefill += c
        if n_decode == 0 and not chunks:
            self.busy = False
            return None
        self.busy = True
        return cfg.step_base_s + cfg.decode_s * n_decode + cfg.prefill_s * prefill

    def finish_step(self, now: float) -> tuple[list[Request], list[Request]]:
        """End the step at `now`: returns (requests whose first token came, requests done)."""
        self.steps += 1
        step = self.steps
        done: list[Request] = []
        decoding = self.decoding
        while decoding and decoding[0][0] <= step:
            r = heapq.heappop(decoding)[2]
            r.finish = now
            self.cache.release(r.keys, self._partial(r))
            done.append(r)
        first: list[Request] = []
        for r, c in self._chunks:
            r.remaining -= c
            if r.remaining == 0:
                r.first_token = now
                first.append(r)
        if first:
            self.prefilling = [r for r in self.prefilling if r.remaining > 0]
            for r in first:
                if r.output_tokens <= 1:
                    r.finish = now
                    self.cache.release(r.keys, self._partial(r))
                    done.append(r)
                else:
                    self._seq += 1
                    heapq.heappush(decoding, (step + r.output_tokens - 1, self._seq, r))
        return first, done
