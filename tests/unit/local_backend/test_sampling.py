from __future__ import annotations

import torch

from local_backend.engine.sampling import Sampler
from local_backend.engine.sequence import SamplingParams


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(100, generator=torch.Generator().manual_seed(seed))


def _draw(params: SamplingParams, n: int = 30) -> list[int]:
    sampler = Sampler(params)
    return [sampler.sample(_logits(i), []) for i in range(n)]


def test_temperature_zero_is_argmax() -> None:
    sampler = Sampler(SamplingParams(max_tokens=1, temperature=0.0))
    for i in range(5):
        assert sampler.sample(_logits(i), []) == int(torch.argmax(_logits(i)))


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    a = _draw(SamplingParams(max_tokens=1, temperature=1.0, seed=7))
    assert a == _draw(SamplingParams(max_tokens=1, temperature=1.0, seed=7))
    assert a != _draw(SamplingParams(max_tokens=1, temperature=1.0, seed=8))


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    greedy = [int(torch.argmax(_logits(i))) for i in range(30)]
    assert _draw(SamplingParams(max_tokens=1, top_k=1)) == greedy
    assert _draw(SamplingParams(max_tokens=1, top_p=1e-6)) == greedy


def test_top_p_only_samples_from_the_nucleus() -> None:
    logits = torch.tensor([5.0, 4.9, -5.0, -5.0, -5.0])
    sampler = Sampler(SamplingParams(max_tokens=1, top_p=0.9, seed=1))
    assert {sampler.sample(logits, []) for _ in range(200)} == {0, 1}


def test_frequency_penalty_discourages_repeats() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0])
    sampler = Sampler(SamplingParams(max_tokens=1, temperature=0.0, frequency_penalty=1.0))
    assert sampler.sample(logits, []) == 0
    assert sampler.sample(logits, [0]) == 1
