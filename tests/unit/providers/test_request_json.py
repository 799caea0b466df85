"""`with_members`: the client's bytes with top-level members replaced, checked against the
parsers on each side — the gateway's (pydantic-core, which the edge parses with) and the
stdlib's (what an upstream in Python reads)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import from_json

from gateway.providers.request_json import encode, with_members

# JSON values as a client sends them: text with quotes, backslashes and non-ASCII, nesting.
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
_SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) \
    | st.floats(allow_nan=False, allow_infinity=False) | _TEXT
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=20)
_KEYS = st.sampled_from(["model", "stream_options", "messages", "x"]) | _TEXT


@st.composite
def _raw_objects(draw: Any) -> bytes:
    """An object's JSON text as clients spell it: any key order, duplicate keys, pretty or
    compact, `\\u` escapes or raw UTF-8."""
    members = draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=6))
    ascii_only = draw(st.booleans())
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", " : ")]))
    parts = [json.dumps(k, ensure_ascii=ascii_only) + sep[1]
             + json.dumps(v, ensure_ascii=ascii_only) for k, v in members]
    return ("{" + sep[0].join(parts) + "}").encode()


_CHANGES = st.dictionaries(st.sampled_from(["model", "stream_options", "new"]), _VALUES,
                           max_size=3)


@settings(max_examples=400, deadline=None)
@given(_raw_objects(), _CHANGES)
def test_members_are_set_and_everything_else_is_what_the_gateway_parsed(
        raw: bytes, changes: dict[str, Any]) -> None:
    body = from_json(raw)
    out = with_members(raw, body, changes)
    expected = {**body, **changes}
    assert from_json(out) == expected
    assert json.loads(out) == expected
    # Duplicates collapsed: one member per key, so every upstream parser reads the same object.
    pairs = json.loads(out, object_pairs_hook=lambda kv: kv)
    assert len(pairs) == len(expected)
    assert [k for k, _ in pairs] == list(expected)


def test_duplicate_model_keys_become_the_one_the_gateway_routed() -> None:
    raw = b'{"model":"secret-upstream-name","messages":[],"model":"public"}'
    out = with_members(raw, from_json(raw), {"model": "up"})
    assert out == b'{"model":"up","messages":[]}'


def test_other_values_keep_their_bytes() -> None:
    # Spelling the gateway would change on a re-encode: exponents, escapes, -0.0, big numbers.
    raw = (b'{"messages": [{"role": "user", "content": "caf\\u00e9 \\"q\\""}], '
           b'"temperature": 1E0, "seed": 123456789012345678901234567890, "x": -0.0, '
           b'"model": "public"}')
    out = with_members(raw, from_json(raw), {"model": "up"})
    assert out == (b'{"messages":[{"role": "user", "content": "caf\\u00e9 \\"q\\""}],'
                   b'"temperature":1E0,"seed":123456789012345678901234567890,"x":-0.0,'
                   b'"model":"up"}')


def test_a_missing_member_is_added_at_the_end() -> None:
    raw = b'{"model":"m","stream":true}'
    out = with_members(raw, from_json(raw), {"stream_options": {"include_usage": True}})
    assert out == b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'


def test_bytes_that_are_not_the_body_fall_back_to_encoding_it() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "é"}]}
    out = with_members(b"", body, {"model": "up"})
    assert json.loads(out) == {**body, "model": "up"}


def test_encode_writes_what_the_stdlib_writes_for_json_data() -> None:
    obj = {"a": [1, 2.5, None, True], "é": "\u2028 \"quoted\" \\", "n": {"deep": []}}
    assert json.loads(encode(obj)) == obj
    assert encode(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
