from __future__ import annotations

import random
from typing import Any

import pytest

from local_backend.engine.detokenize import IncrementalDetokenizer


def _run(tokenizer: Any, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], Any]:
    detok = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for token in ids:
        detok.add(token)
        if detok.stopped:
            break
        deltas.append(detok.take(final=False))
    detok.finish()
    deltas.append(detok.take(final=True))
    return deltas, detok


@pytest.mark.parametrize("seed", range(5))
def test_deltas_concatenate_to_the_full_decode(tiny_lm: tuple[Any, Any], seed: int) -> None:
    _, tokenizer = tiny_lm
    rng = random.Random(seed)
    ids = [rng.randrange(3, len(tokenizer)) for _ in range(60)]
    deltas, detok = _run(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == detok.text


def test_multibyte_character_split_across_tokens_is_held_until_complete(
    tiny_lm: tuple[Any, Any],
) -> None:
    _, tokenizer = tiny_lm
    text = "a🚀b"
    # Feed one byte-level token per UTF-8 byte: the rocket is four tokens.
    ids = [tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.tokenize(text)]
    byte_ids = []
    for tid in ids:
        pieces = tokenizer.convert_ids_to_tokens([tid])[0]
        byte_ids += [tokenizer.convert_tokens_to_ids(ch) for ch in pieces]
    assert len(byte_ids) == 6
    deltas, _ = _run(tokenizer, byte_ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    assert "🚀" in deltas


def test_stop_string_is_trimmed_and_never_sent_even_across_tokens(
    tiny_lm: tuple[Any, Any],
) -> None:
    _, tokenizer = tiny_lm
    text = "one two STOP three"
    byte_ids = [tokenizer.convert_tokens_to_ids(ch) for ch in tokenizer.tokenize(text)]
    byte_ids = [
        tokenizer.convert_tokens_to_ids(c)
        for t in tokenizer.convert_ids_to_tokens(byte_ids) for c in t
    ]
    deltas, detok = _run(tokenizer, byte_ids, stop=("STOP",))
    assert detok.stopped
    assert "".join(deltas) == "one two "
    assert not any("S" in d for d in deltas)


def test_earliest_of_several_stop_strings_wins(tiny_lm: tuple[Any, Any]) -> None:
    _, tokenizer = tiny_lm
    ids = tokenizer.encode("abc xyz def", add_special_tokens=False)
    deltas, detok = _run(tokenizer, ids, stop=("def", "xyz"))
    assert detok.stopped and "".join(deltas) == "abc "
