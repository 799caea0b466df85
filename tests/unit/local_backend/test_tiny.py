from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local_backend.prompts import FALLBACK_CHAT_TEMPLATE, chat_prompt_ids
from local_backend.tiny import TINY_MODEL_NAME, ensure_tiny_model

TEXTS = [
    "hello world",
    "héllo wörld — naïve café",
    "こんにちは世界 你好 Привет مرحبا",
    "emoji 🙂🚀👩‍👩‍👧 flags 🇫🇷",
    "control \x00\x01\t\r\n and trailing spaces   ",
    "combining e\u0301 and zero-width \u200b joiner",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizer_round_trips_any_utf8(tiny_lm: tuple[Any, Any], text: str) -> None:
    _, tokenizer = tiny_lm
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_tiny_model_is_tiny_and_has_a_chat_template(
    tiny_lm: tuple[Any, Any], tiny_model_dir: Path
) -> None:
    model, tokenizer = tiny_lm
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    assert tokenizer.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_prompt_uses_fallback_template_when_tokenizer_has_none(
    tiny_lm: tuple[Any, Any],
) -> None:
    _, tokenizer = tiny_lm
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        ids = chat_prompt_ids(tokenizer, [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}])
    finally:
        tokenizer.chat_template = saved
    assert tokenizer.decode(ids) == "system: Be brief.\nuser: Hi\nassistant:"
    assert "assistant:" in FALLBACK_CHAT_TEMPLATE


def test_ensure_tiny_model_builds_once(tmp_path: Path) -> None:
    first = ensure_tiny_model(tmp_path)
    assert first == tmp_path / TINY_MODEL_NAME
    stamp = (first / "config.json").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [TINY_MODEL_NAME]  # no staging left behind
