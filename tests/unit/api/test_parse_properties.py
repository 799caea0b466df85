"""Properties of the request parsers: whatever a client sends, the only exception that leaves
them is `InvalidRequest` (a 400 naming the field), never one that becomes a 500.

Arbitrary JSON rarely reaches past the first field check, so the generated objects use the
keys the body models declare (read from their JSON Schema, nested ones included) far more
often than random ones, and scalars of every JSON type in every place.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway.api.anthropic import parse_messages_request
from gateway.api.bodies import OPENAI_BODIES, MessagesRequest, check_messages, check_openai
from gateway.api.json_body import parse_json_object
from gateway.errors import InvalidRequest

# Property tests run in CI on every commit: a few hundred examples each keep the file to
# seconds; `--hypothesis-seed` replays a failure.
FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _keys(schema: Any) -> set[str]:
    """Every property name a JSON Schema mentions, at any depth."""
    out: set[str] = set()
    if isinstance(schema, dict):
        out |= set(schema.get("properties", {}))
        for v in schema.values():
            out |= _keys(v)
    elif isinstance(schema, list):
        for v in schema:
            out |= _keys(v)
    return out


MODELS: list[type[BaseModel]] = [*OPENAI_BODIES.values(), MessagesRequest]
KEYS = sorted(set().union(*(_keys(m.model_json_schema()) for m in MODELS))
              # Read by the /v1/messages translation though no model declares them.
              | {"source", "data", "media_type", "url", "input", "tool_use_id", "id",
                 "output_config", "format", "schema", "title"})
# Values the parsers branch on: roles, block and part types, tool choices.
WORDS = ["user", "assistant", "system", "tool", "developer", "function", "text", "image",
         "image_url", "document", "tool_use", "tool_result", "thinking", "base64", "auto",
         "any", "none", "custom", "json_schema", "data:image/png;base64,AA", "data:x", ""]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(WORDS)
           | st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner,
                                     max_size=6)),
    max_leaves=40)
bodies = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), json_values, max_size=10)


def _only_invalid_request(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except InvalidRequest as e:
        assert e.status == 400 and e.message


def _mangled(raw: bytes, cut: int, junk: bytes) -> bytes:
    """A JSON text cut short and/or with bytes spliced in: what a broken client sends."""
    i = cut % (len(raw) + 1)
    return raw[:i] + junk + raw[i:]


@FAST
@given(st.binary(max_size=200), st.booleans())
def test_parse_json_object_on_arbitrary_bytes(raw: bytes, anthropic_paths: bool) -> None:
    _only_invalid_request(lambda: parse_json_object(raw, anthropic_paths=anthropic_paths))


@FAST
@given(bodies, st.integers(min_value=0), st.sampled_from(
    [b"", b"\\ud800", b'"\\udfff"', b"\xff", b"{", b"]", b",", b"NaN", b"1e999", b"\x00"]),
    st.booleans())
def test_parse_json_object_on_broken_json(body: dict[str, Any], cut: int, junk: bytes,
                                          anthropic_paths: bool) -> None:
    raw = _mangled(json.dumps(body).encode(), cut, junk)
    _only_invalid_request(lambda: parse_json_object(raw, anthropic_paths=anthropic_paths))


@FAST
@given(st.sampled_from(sorted(OPENAI_BODIES)), bodies | json_values)
def test_check_openai_on_arbitrary_json(endpoint: str, body: Any) -> None:
    _only_invalid_request(check_openai, endpoint, body)


@FAST
@given(bodies | json_values)
def test_check_messages_on_arbitrary_json(body: Any) -> None:
    _only_invalid_request(check_messages, body)


# Bodies that pass `check_messages`'s required fields, so the translation after it runs: a
# few top-level keys and content blocks of every type, with arbitrary values.
TOP_KEYS = ["system", "tools", "tool_choice", "metadata", "output_config", "stop_sequences",
            "temperature", "top_p", "stream", "thinking"]
BLOCK_KEYS = ["text", "source", "id", "name", "input", "tool_use_id", "content", "title"]
BLOCK_TYPES = ["text", "image", "document", "tool_use", "tool_result", "thinking",
               "redacted_thinking", "web_search", ""]
blocks = st.builds(lambda kind, rest: {**rest, "type": kind}, st.sampled_from(BLOCK_TYPES),
                   st.dictionaries(st.sampled_from(BLOCK_KEYS), json_values, max_size=3))
messages_bodies = st.builds(
    lambda rest, msgs, model, max_tokens: {**rest, "model": model, "max_tokens": max_tokens,
                                           "messages": msgs},
    st.dictionaries(st.sampled_from(TOP_KEYS), json_values, max_size=3),
    st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]),
         "content": st.text(max_size=5) | st.lists(blocks, min_size=1, max_size=3)}),
        min_size=1, max_size=3),
    st.text(min_size=1, max_size=5), st.integers(min_value=1, max_value=10_000))


@FAST
@given(messages_bodies | bodies, st.sampled_from([{}, {"x-api-key": "k"},
                                                  {"authorization": "Bearer k"}]))
def test_parse_messages_request_on_arbitrary_json(body: dict[str, Any],
                                                  headers: dict[str, str]) -> None:
    raw = json.dumps(body).encode()
    _only_invalid_request(parse_messages_request, raw, headers)


@FAST
@given(st.binary(max_size=200))
def test_parse_messages_request_on_arbitrary_bytes(raw: bytes) -> None:
    _only_invalid_request(parse_messages_request, raw, {})
