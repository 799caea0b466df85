"""Token counts the gateway works out itself: a cheap guess at admission, an exact count later.

Two tools for two places:
- ``estimate_prompt_tokens(body)`` runs on the hot path, at admission, to reserve rate-limit
  tokens. It counts characters and divides by four (OpenAI's rule of thumb for English), plus
  the per-message overhead; no tokenizer, no JSON serialisation of messages.
- ``count_prompt_tokens`` / ``count_text_tokens`` / ``estimate_usage`` run after the request,
  off the hot path, when a provider reported no usage. They use the ``bpe-openai`` tokenizer
  (offline, tiktoken-compatible o200k_base / cl100k_base) and fall back to UTF-8 bytes / 4
  only when the tokenizer cannot be loaded.

Per-message overhead follows OpenAI's cookbook ("How to count tokens with tiktoken"): every
message costs 3 tokens beyond its content (``<|start|>{role}<|message|>…<|end|>``), a ``name``
one more, and every reply is primed with 3 (``<|start|>assistant<|message|>``). Images cannot
be sized without decoding them: ``detail: low`` counts 85 tokens, anything else 765 (a
1024×1024 image at high detail: 4 tiles × 170 + 85). Tool definitions count as their JSON text.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from gateway.accounting.usage import Usage

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
IMAGE_LOW = 85
IMAGE_HIGH = 765
DEFAULT_ENCODING = "o200k_base"
# The tokenizer refuses inputs past 1M characters and results past 200k tokens; a UTF-8
# character is at most 4 byte-level tokens, so 50k-character chunks stay inside both.
_CHUNK_CHARS = 50_000

Counter = Callable[[str], int]


def _ceil_div4(n: int) -> int:
    return (n + 3) // 4


def heuristic_count(text: str) -> int:
    """UTF-8 bytes / 4, rounded up: the fallback when no tokenizer is available."""
    return _ceil_div4(len(text.encode("utf-8", "replace")))


# ---------------------------------------------------------------------------------------------
# Fast path (admission)


def _chars(value: Any) -> int:
    """Characters of every string inside ``value`` (keys of dicts included, as JSON would)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(len(k) + _chars(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_chars(v) for v in value)
    return 0 if value is None else 4  # a number or boolean: about one token


def json_chars(value: Any) -> int:
    """Characters of every string in a JSON value (keys included), for a cheap estimate."""
    return _chars(value)


def _content_chars(content: Any) -> tuple[int, int]:
    """(characters of text, fixed tokens of images) in a message's ``content``."""
    if isinstance(content, str):
        return len(content), 0
    chars = fixed = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else 0
            elif kind == "image_url":
                fixed += _image_tokens(part)
            elif kind != "input_audio" and kind != "file":
                # Unknown part types: count their strings rather than nothing.
                chars += _chars(part)
    return chars, fixed


def _image_tokens(part: Mapping[str, Any]) -> int:
    img = part.get("image_url")
    detail = img.get("detail") if isinstance(img, Mapping) else None
    return IMAGE_LOW if detail == "low" else IMAGE_HIGH


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Cheap prompt-token guess for admission: characters / 4 plus message overhead.

    Handles chat (``messages``), completions (``prompt``) and embeddings (``input``) bodies.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = fixed = 0
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            fixed += TOKENS_PER_MESSAGE
            c, f = _content_chars(m.get("content"))
            chars += c + len(m.get("role") or "")
            fixed += f
            if m.get("name"):
                fixed += TOKENS_PER_NAME
                chars += len(str(m["name"]))
            if m.get("tool_calls"):
                chars += _chars(m["tool_calls"])
        tools = body.get("tools") or body.get("functions")
        if tools:
            chars += _chars(tools)
        return _ceil_div4(chars) + fixed + REPLY_PRIMING
    for key in ("prompt", "input"):
        if key in body:
            return _inputs(body[key], _fast_count)
    return _scoring_tokens(body, _fast_count)


def _scoring_tokens(body: Mapping[str, Any], count: Counter) -> int:
    """Rerank (`query` + `documents`) and score (`text_1` × `text_2`) bodies, counted as vLLM
    does: each document is read with the query, each pair of texts together."""
    docs = body.get("documents")
    if isinstance(docs, list):
        q = count(str(body.get("query") or ""))
        texts = [d.get("text") if isinstance(d, Mapping) else d for d in docs]
        return sum(q + count(str(t or "")) for t in texts)
    if "text_1" in body or "text_2" in body:
        left, right = body.get("text_1"), body.get("text_2")
        lefts = left if isinstance(left, list) else [left]
        rights = right if isinstance(right, list) else [right]
        a = [count(str(t or "")) for t in lefts]
        b = [count(str(t or "")) for t in rights]
        if len(a) == 1:
            return sum(a[0] + n for n in b)
        return sum(x + y for x, y in zip(a, b, strict=False))
    return 0


def _fast_count(text: str) -> int:
    return _ceil_div4(len(text))


def _inputs(value: Any, count: Counter) -> int:
    """Tokens of a completions ``prompt`` / embeddings ``input`` (text, texts, or token ids)."""
    if isinstance(value, str):
        return count(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)  # already token ids
        return sum(_inputs(v, count) for v in value)
    return 0


# ---------------------------------------------------------------------------------------------
# Exact path (post-hoc, when a provider reported no usage)


@functools.lru_cache(maxsize=8)
def _encoding(name: str) -> Counter | None:
    try:
        import bpe_openai

        enc = bpe_openai.get_encoding(name)
    except Exception:  # the package missing or its data unreadable: use the heuristic
        log.warning("tokenizer %s unavailable; token estimates fall back to bytes/4", name)
        return None

    def count(text: str) -> int:
        n = 0
        for i in range(0, len(text), _CHUNK_CHARS):
            chunk = text[i : i + _CHUNK_CHARS]
            try:
                n += len(enc.encode_ordinary(chunk))
            except Exception:  # a pathological chunk: never let counting fail a settle
                n += heuristic_count(chunk)
        return n

    return count


def encoding_for(model: str | None) -> str:
    """Encoding for an upstream model name: the known OpenAI ones, else o200k_base.

    Self-hosted models (Llama, Qwen…) have their own tokenizers; o200k_base is a
    reasonable stand-in for an estimate and is what we document.
    """
    if model:
        try:
            import bpe_openai

            name: str = bpe_openai.encoding_name_for_model(model)
            if name in ("o200k_base", "cl100k_base"):
                return name
        except Exception:  # unknown model names raise: the default serves them
            pass
        if model.startswith(("gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-")):
            return "cl100k_base"
    return DEFAULT_ENCODING


def counter_for(model: str | None) -> Counter:
    return _encoding(encoding_for(model)) or heuristic_count


def warm_up(models: list[str] | None = None) -> None:
    """Load the tokenizers up front (tens of ms each) so the first settle does not pay it."""
    for m in models or [None]:  # type: ignore[list-item]
        counter_for(m)


def count_text_tokens(text: str, model: str | None = None) -> int:
    """Exact tokens of a piece of text (completion text) for ``model``'s encoding."""
    return counter_for(model)(text) if text else 0


def count_prompt_tokens(body: Mapping[str, Any], model: str | None = None) -> int:
    """Tokens of an OpenAI request body's prompt with the tokenizer (chat, completions,
    embeddings), message overhead included as in OpenAI's cookbook."""
    count = counter_for(model)
    messages = body.get("messages")
    if isinstance(messages, list):
        n = REPLY_PRIMING
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            n += TOKENS_PER_MESSAGE + count(str(m.get("role") or ""))
            n += _content_tokens(m.get("content"), count)
            if m.get("name"):
                n += TOKENS_PER_NAME + count(str(m["name"]))
            for call in m.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping):
                    n += count(str(fn.get("name") or "")) + count(str(fn.get("arguments") or ""))
        tools = body.get("tools") or body.get("functions")
        if tools:
            n += count(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))
        return n
    for key in ("prompt", "input"):
        if key in body:
            return _inputs(body[key], count)
    return _scoring_tokens(body, count)


def _content_tokens(content: Any, count: Counter) -> int:
    if isinstance(content, str):
        return count(content)
    n = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind == "text":
                n += count(str(part.get("text") or ""))
            elif kind == "image_url":
                n += _image_tokens(part)
    return n


def estimate_usage(
    body: Mapping[str, Any] | None,
    completion_text: str | None,
    model: str | None = None,
    *,
    prompt_tokens: int | None = None,
) -> Usage:
    """Usage of a request whose provider reported none (source ``estimated``).

    ``prompt_tokens`` is used when the body is not at hand (e.g. the admission estimate).
    """
    prompt = count_prompt_tokens(body, model) if body is not None else (prompt_tokens or 0)
    output = count_text_tokens(completion_text or "", model)
    return Usage(input_uncached=prompt, output=output, source="estimated")
