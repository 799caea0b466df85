"""What one generation asks for, what it has produced so far, and what it reports per step."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one sequence picks its tokens and when it ends (OpenAI fields plus vLLM's extras)."""

    max_tokens: int
    """Tokens to generate at most; reaching it finishes with `length`."""
    temperature: float = 1.0
    """0 is greedy (argmax); otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps all (vLLM uses -1 for that, also accepted)."""
    seed: int | None = None
    """Seeds this sequence's own generator: the same seed gives the same tokens."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; the stop string itself is trimmed from the output."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation besides the model's end-of-sequence tokens."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence tokens (vLLM extension; benchmarks and tests)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True, slots=True)
class SequenceOutput:
    """What one engine step produced for one sequence, handed to the HTTP layer."""

    text: str
    """New text since the previous output (may be empty while a character or stop is pending)."""
    completion_tokens: int
    """Tokens generated so far, end-of-sequence token included (vLLM counts it too)."""
    finish_reason: FinishReason | None = None
    error: str | None = None


_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Sequence:
    """One prompt being generated. The engine's worker thread owns the generation fields; the
    event loop only reads them after a step and sets ``aborted``."""

    prompt_ids: list[int]
    params: SamplingParams
    outputs: asyncio.Queue[SequenceOutput]
    seq_id: int = field(default_factory=lambda: next(_ids))
    arrival: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    first_token_at: float | None = None
    finish_reason: FinishReason | None = None
    aborted: bool = False

    @property
    def num_tokens(self) -> int:
        """Tokens this sequence holds in the KV cache once its last token is fed back."""
        return len(self.prompt_ids) + len(self.generated)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
