"""Turn one row of logits into the next token: greedy, or seeded sampling per sequence."""

from __future__ import annotations

import random

import torch

from local_backend.engine.sequence import SamplingParams


class Sampler:
    """Samples one sequence's tokens. Each sequence has its own generator, so a seeded request
    draws the same numbers whatever else shares its batch."""

    def __init__(self, params: SamplingParams) -> None:
        self._params = params
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        # Sampling runs on CPU float32 logits, so the generator lives on the CPU too and a
        # seed gives the same tokens on a GPU host as on a laptop (for equal logits).
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(self, logits: torch.Tensor, generated: list[int]) -> int:
        """Pick the next token from ``logits`` (shape ``[vocab]``, float32, CPU)."""
        p = self._params
        if (p.presence_penalty or p.frequency_penalty) and generated:
            counts = torch.bincount(torch.tensor(generated), minlength=logits.shape[0])
            counts = counts[: logits.shape[0]].to(logits.dtype)
            logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
        if p.temperature == 0.0:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.shape[0]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Drop a token when the tokens before it already reach top_p; the first always stays.
            drop = (cumulative - sorted_probs) >= p.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator))
