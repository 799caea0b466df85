"""Reading usage into disjoint buckets: the Responses API's counts land as chat's do."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.accounting.usage import Usage, from_openai, from_responses


@pytest.mark.parametrize(("usage", "expected"), [
    ({"input_tokens": 328, "input_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 0},
      "output_tokens": 84, "output_tokens_details": {"reasoning_tokens": 64},
      "total_tokens": 412}, Usage(input_uncached=72, cache_read=256, output=20, reasoning=64)),
    ({"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}, Usage(input_uncached=5,
                                                                       output=2)),
    # Details larger than their total (a buggy server) are capped, never negative.
    ({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 9}, "output_tokens": 1,
      "output_tokens_details": {"reasoning_tokens": 4}}, Usage(cache_read=5, reasoning=1)),
    ({"input_tokens": None, "input_tokens_details": None, "output_tokens": "3"}, Usage()),
    (None, None),
])
def test_responses_usage_splits_into_buckets(usage: Any, expected: Usage | None) -> None:
    assert from_responses(usage) == expected


def test_one_count_lands_alike_through_chat_and_responses() -> None:
    chat = {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70,
            "prompt_tokens_details": {"cached_tokens": 16},
            "completion_tokens_details": {"reasoning_tokens": 12}}
    responses = {"input_tokens": 40, "output_tokens": 30, "total_tokens": 70,
                 "input_tokens_details": {"cached_tokens": 16},
                 "output_tokens_details": {"reasoning_tokens": 12}}
    assert from_responses(responses) == from_openai(chat)
    assert from_responses(responses, "provider_partial") == from_openai(chat, "provider_partial")
