"""Reuse the KV of earlier prompts for the longest shared prefix of a new prompt.

In a causal model a token's keys and values depend only on the tokens before it, so the KV of
any common prefix of two prompts is the same. Entries are whole prefilled prompts, evicted
least-recently-used under a token budget. It reports vLLM's counters: tokens queried and hit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from local_backend.engine.kv_batch import LayerKV


@dataclass(frozen=True, slots=True)
class PrefixHit:
    tokens: int
    kv: list[LayerKV] | None  # per layer, [1, heads, tokens, head_dim]; None when tokens == 0


class PrefixCache:
    def __init__(self, max_tokens: int) -> None:
        self._max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], list[LayerKV]] = OrderedDict()
        self._tokens = 0

    @property
    def enabled(self) -> bool:
        return self._max_tokens > 0

    def lookup(self, prompt: list[int]) -> PrefixHit:
        """The longest cached prefix of ``prompt``, leaving at least one token to compute (the
        last prompt token's logits pick the first generated token)."""
        best_len, best_key = 0, None
        if self.enabled and len(prompt) > 1:
            wanted = torch.tensor(prompt[:-1])
            for key in self._entries:
                n = min(len(key), len(wanted))
                if n <= best_len:
                    continue
                same = torch.tensor(key[:n]) == wanted[:n]
                common = n if bool(same.all()) else int(torch.argmin(same.int()))
                if common > best_len:
                    best_len, best_key = common, key
        if best_key is None or best_len == 0:
            return PrefixHit(0, None)
        self._entries.move_to_end(best_key)
        kv = self._entries[best_key]
        return PrefixHit(best_len, [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in kv])

    def insert(self, prompt: list[int], kv: list[LayerKV]) -> None:
        """Remember a prefilled prompt's KV (one row, exactly ``len(prompt)`` positions)."""
        if not self.enabled or len(prompt) > self._max_tokens:
            return
        key = tuple(prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = kv
        self._tokens += len(key)
        while self._tokens > self._max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)
