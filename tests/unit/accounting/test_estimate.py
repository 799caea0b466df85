"""Token estimation: the cheap admission guess and the tokenizer count for missing usage."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from gateway.accounting import estimate as est
from gateway.accounting.estimate import (
    IMAGE_HIGH,
    IMAGE_LOW,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    count_prompt_tokens,
    count_text_tokens,
    encoding_for,
    estimate_prompt_tokens,
    estimate_usage,
    heuristic_count,
)

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "ann", "content": "What is the capital of France?"},
    ],
}


def test_tokenizer_counts_known_strings() -> None:
    # o200k_base: "hello world" is two tokens; cl100k agrees on this one.
    assert count_text_tokens("hello world", "gpt-4o") == 2
    assert count_text_tokens("hello world", "gpt-4") == 2
    assert count_text_tokens("", "gpt-4o") == 0
    # special-token text in user content is ordinary text, never a control token
    assert count_text_tokens("<|endoftext|>", "gpt-4o") > 1


def test_encoding_choice() -> None:
    assert encoding_for("gpt-4o-mini") == "o200k_base"
    assert encoding_for("gpt-4-0613") == "cl100k_base"
    assert encoding_for("meta-llama/Llama-3-8B") == "o200k_base"
    assert encoding_for(None) == "o200k_base"


def test_chat_prompt_follows_the_cookbook_overhead() -> None:
    c = lambda s: count_text_tokens(s, "gpt-4o")  # noqa: E731
    expected = REPLY_PRIMING
    for m in CHAT["messages"]:
        expected += TOKENS_PER_MESSAGE + c(m["role"]) + c(m["content"])
    expected += 1 + c("ann")  # a name costs one token more than its text
    assert count_prompt_tokens(CHAT, "gpt-4o") == expected


def test_content_parts_images_and_tool_calls() -> None:
    body = {"messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:...", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"q\": \"paris\"}"}}]},
    ], "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]}
    n = count_prompt_tokens(body, "gpt-4o")
    c = lambda s: count_text_tokens(s, "gpt-4o")  # noqa: E731
    base = REPLY_PRIMING + 2 * TOKENS_PER_MESSAGE + c("user") + c("assistant")
    parts = c("describe") + IMAGE_LOW + IMAGE_HIGH + c("lookup") + c("{\"q\": \"paris\"}")
    assert n > base + parts  # plus the tool definitions' JSON
    assert estimate_prompt_tokens(body) >= IMAGE_LOW + IMAGE_HIGH


def test_completions_and_embeddings_bodies() -> None:
    assert count_prompt_tokens({"prompt": "hello world"}) == 2
    assert count_prompt_tokens({"prompt": ["hello world", "hello"]}) == 3
    assert count_prompt_tokens({"input": [[1, 2, 3], [4]]}) == 4  # token ids count as given
    assert estimate_prompt_tokens({"input": "abcdefgh"}) == 2
    assert estimate_prompt_tokens({"input": [1, 2, 3]}) == 3
    assert estimate_prompt_tokens({}) == 0


def test_fast_estimate_is_chars_over_four_plus_overhead() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_prompt_tokens(body) == (400 + len("user") + 3) // 4 + TOKENS_PER_MESSAGE \
        + REPLY_PRIMING
    # and in the same ballpark as the tokenizer for ordinary text
    text = "The quick brown fox jumps over the lazy dog. " * 50
    real = count_prompt_tokens({"messages": [{"role": "user", "content": text}]})
    guess = estimate_prompt_tokens({"messages": [{"role": "user", "content": text}]})
    assert 0.5 * real < guess < 2 * real


def test_long_text_is_counted_in_chunks() -> None:
    text = "word " * 300_000  # 1.5M characters: past the tokenizer's single-call limit
    n = count_text_tokens(text, "gpt-4o")
    assert 290_000 < n <= 310_000


def test_estimate_usage_is_marked_estimated() -> None:
    u = estimate_usage(CHAT, "Paris.", "gpt-4o")
    assert u.source == "estimated"
    assert u.input_uncached == count_prompt_tokens(CHAT, "gpt-4o")
    assert u.output == count_text_tokens("Paris.", "gpt-4o")
    assert estimate_usage(None, None, prompt_tokens=17).input_uncached == 17


def test_falls_back_to_bytes_over_four_without_the_tokenizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    est._encoding.cache_clear()
    monkeypatch.setitem(sys.modules, "bpe_openai", None)  # import now fails
    try:
        assert count_text_tokens("hello world!", "gpt-4o") == heuristic_count("hello world!") == 3
        assert heuristic_count("é") == 1
    finally:
        est._encoding.cache_clear()


def test_rerank_and_score_bodies_are_counted_as_vllm_reads_them() -> None:
    """Each document is read with the query; each text pair together."""
    from gateway.accounting.estimate import count_prompt_tokens, estimate_prompt_tokens

    rerank = {"query": "capital of France", "documents": ["Paris", {"text": "Lyon is big"}]}
    q = count_prompt_tokens({"input": "capital of France"})
    docs = count_prompt_tokens({"input": "Paris"}) + count_prompt_tokens({"input": "Lyon is big"})
    assert count_prompt_tokens(rerank) == 2 * q + docs
    assert estimate_prompt_tokens(rerank) > 0
    score = {"text_1": "a cat", "text_2": ["a dog", "a car"]}
    one = count_prompt_tokens({"input": "a cat"})
    assert count_prompt_tokens(score) == 2 * one + count_prompt_tokens(
        {"input": ["a dog", "a car"]})
