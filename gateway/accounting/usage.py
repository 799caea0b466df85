"""Token usage in explicit, disjoint buckets, and reading it from each wire format.

Invariant: every token is in exactly one bucket, so ``total`` is the plain sum.
- OpenAI's ``prompt_tokens`` *includes* ``prompt_tokens_details.cached_tokens``, and
  ``completion_tokens`` *includes* ``completion_tokens_details.reasoning_tokens``: they are
  split here (input_uncached = prompt - cached, output = completion - reasoning). The Responses
  API's ``input_tokens`` / ``output_tokens`` include their details the same way.
- Anthropic's ``input_tokens`` *excludes* ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``: each maps straight to its bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

UsageSource = Literal["provider", "provider_partial", "estimated"]


@dataclass(frozen=True, slots=True)
class Usage:
    input_uncached: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    # provider: the upstream's own count; provider_partial: the upstream's count of a stream
    # that did not finish (or usage continuous stats cut short); estimated: our tokenizer's.
    source: UsageSource = "provider"

    @property
    def prompt_tokens(self) -> int:
        return self.input_uncached + self.cache_read + self.cache_write

    @property
    def completion_tokens(self) -> int:
        return self.output + self.reasoning

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def with_source(self, source: UsageSource) -> Usage:
        return replace(self, source=source)

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object for this usage (inclusive totals, details split out)."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total,
        }
        if self.cache_read:
            out["prompt_tokens_details"] = {"cached_tokens": self.cache_read}
        if self.reasoning:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning}
        return out


ZERO = Usage()


def _int(v: Any) -> int:
    return v if isinstance(v, int) and v > 0 else 0


def from_openai(u: dict[str, Any] | None, source: UsageSource = "provider") -> Usage | None:
    """OpenAI / vLLM ``usage`` object → Usage. None when the object is absent or null."""
    if not isinstance(u, dict):
        return None
    return _inclusive(u.get("prompt_tokens"), u.get("completion_tokens"),
                      u.get("prompt_tokens_details"), u.get("completion_tokens_details"), source)


def _inclusive(prompt_total: Any, completion_total: Any, pd: Any, cd: Any,
               source: UsageSource) -> Usage:
    """Totals that include their cached and reasoning details (OpenAI's, both APIs) → Usage."""
    prompt = _int(prompt_total)
    completion = _int(completion_total)
    cached = min(_int(pd.get("cached_tokens")) if isinstance(pd, dict) else 0, prompt)
    reasoning = min(_int(cd.get("reasoning_tokens")) if isinstance(cd, dict) else 0, completion)
    return Usage(
        input_uncached=prompt - cached,
        cache_read=cached,
        output=completion - reasoning,
        reasoning=reasoning,
        source=source,
    )


def from_anthropic(u: dict[str, Any] | None, source: UsageSource = "provider") -> Usage | None:
    """Anthropic Messages ``usage`` → Usage (input_tokens already excludes cache tokens)."""
    if not isinstance(u, dict):
        return None
    return Usage(
        input_uncached=_int(u.get("input_tokens")),
        cache_read=_int(u.get("cache_read_input_tokens")),
        cache_write=_int(u.get("cache_creation_input_tokens")),
        output=_int(u.get("output_tokens")),
        source=source,
    )


def from_responses(u: dict[str, Any] | None, source: UsageSource = "provider") -> Usage | None:
    """Responses API ``usage`` → Usage. Its ``input_tokens`` includes
    ``input_tokens_details.cached_tokens`` and ``output_tokens`` includes
    ``output_tokens_details.reasoning_tokens``, exactly as chat's prompt and completion
    counts do: split into the same buckets as ``from_openai``, so one upstream's count lands
    alike through either API."""
    if not isinstance(u, dict):
        return None
    return _inclusive(u.get("input_tokens"), u.get("output_tokens"),
                      u.get("input_tokens_details"), u.get("output_tokens_details"), source)
