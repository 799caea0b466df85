"""Rows of the batched KV cache must compute exactly what each sequence computes alone."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from local_backend.engine.kv_batch import KVBatch
from local_backend.engine.prefix_cache import PrefixCache


def _solo_logits(model: Any, prompt: list[int], fed: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt, then after each fed token, for the sequence run alone."""
    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
        logits = [out.logits[0, -1]]
        for token in fed:
            out = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
    return logits


def test_rows_joining_and_leaving_match_solo_runs(tiny_lm: tuple[Any, Any]) -> None:
    model, _ = tiny_lm
    prompts = {"a": [5, 6, 7, 8, 9, 10, 11, 12], "b": [20, 21, 22], "c": [30, 31, 32, 33, 34]}
    feeds = {name: [40 + i for i in range(6)] for name in prompts}
    expected = {n: _solo_logits(model, prompts[n], feeds[n]) for n in prompts}
    batch = KVBatch(model, torch.device("cpu"))
    rows: list[str] = []
    step = {n: 0 for n in prompts}

    def join(name: str) -> None:
        with torch.inference_mode():
            logits, kv = batch.prefill(prompts[name])
        torch.testing.assert_close(logits, expected[name][0], rtol=1e-4, atol=1e-5)
        batch.append(kv, len(prompts[name]))
        rows.append(name)

    def decode() -> None:
        with torch.inference_mode():
            logits = batch.decode([feeds[n][step[n]] for n in rows])
        for i, name in enumerate(rows):
            step[name] += 1
            torch.testing.assert_close(logits[i], expected[name][step[name]],
                                       rtol=1e-4, atol=1e-5)

    join("a")
    decode()
    join("b")  # shorter than the batch: padded on the left
    decode()
    decode()
    batch.keep([1])  # "a" leaves: its longer columns become dead padding and are trimmed
    rows.remove("a")
    assert batch.width == len(prompts["b"]) + 2
    join("c")  # longer than the batch now: the batch is padded instead
    decode()
    decode()
    assert batch.size == 2


def test_prefix_cache_reuses_kv_with_identical_logits(tiny_lm: tuple[Any, Any]) -> None:
    model, _ = tiny_lm
    batch = KVBatch(model, torch.device("cpu"))
    cache = PrefixCache(max_tokens=1000)
    first = [3, 4, 5, 6, 7, 8, 9]
    second = [3, 4, 5, 6, 50, 51]
    with torch.inference_mode():
        _, kv = batch.prefill(first)
        cache.insert(first, kv)
        hit = cache.lookup(second)
        assert hit.tokens == 4
        reused, _ = batch.prefill(second, hit.kv)
        full, _ = batch.prefill(second)
    torch.testing.assert_close(reused, full, rtol=1e-4, atol=1e-5)
    # A repeated prompt reuses all but its last token (whose logits start generation).
    assert cache.lookup(first).tokens == len(first) - 1


def test_prefix_cache_evicts_least_recently_used() -> None:
    cache = PrefixCache(max_tokens=10)
    kv = [(torch.zeros(1, 1, 6, 2), torch.zeros(1, 1, 6, 2))]
    cache.insert([1, 2, 3, 4, 5, 6], kv)
    cache.insert([7, 8, 9, 10, 11, 12], kv)  # 12 tokens > 10: the first goes
    assert cache.lookup([1, 2, 3, 4, 5, 6, 0]).tokens == 0
    assert cache.lookup([7, 8, 9, 0]).tokens == 3
    assert PrefixCache(max_tokens=0).lookup([1, 2, 3]).tokens == 0
