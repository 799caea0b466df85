"""A native reply the client asked not to store (`store: false`) is read without decoding it
whole (`openai_responses._head`): the client's bytes and the usage must be exactly what the
whole decode gives, for any Response object, laid out as OpenAI or vLLM lay it out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.accounting.usage import from_responses
from gateway.providers.openai_responses import parse_reply
from tests.unit.providers.golden import read
from tests.unit.providers.test_openai_responses import GATEWAY_ID, SNAPSHOT, call, target


def test_golden_reply_not_stored_is_the_same_reply_and_usage() -> None:
    body = read("openai_responses/reply_reasoning_text_tool.json")
    stored, kept = call(), call(store=False)
    whole = parse_reply(stored, target(SNAPSHOT), body, "up")
    fast = parse_reply(kept, target(SNAPSHOT), body, "up")
    assert json.loads(fast.body) == json.loads(whole.body)
    assert fast.usage == whole.usage
    assert kept.upstream_response_id == stored.upstream_response_id
    assert kept.final_response is None  # nothing is stored, so nothing is kept


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_usage = st.one_of(st.none(), st.fixed_dictionaries({
    "input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6),
    "total_tokens": st.integers(0, 10**6),
}, optional={
    "input_tokens_details": st.one_of(st.none(), st.fixed_dictionaries(
        {"cached_tokens": st.integers(0, 10**6)})),
    "output_tokens_details": st.fixed_dictionaries({"reasoning_tokens": st.integers(0, 10**6)}),
}))


@given(up_id=st.from_regex(r"resp_[0-9a-f]{8,48}", fullmatch=True),
       model=st.one_of(st.just(SNAPSHOT), st.just("gpt-5-mini"),
                       st.from_regex(r"[A-Za-z0-9._:/-]{1,40}", fullmatch=True)),
       text=_text, metadata=st.dictionaries(_text, _text, max_size=3), usage=_usage,
       vllm_order=st.booleans(), indent=st.sampled_from([None, 2]))
def test_any_reply_not_stored_reads_as_the_whole_decode(
        up_id: str, model: str, text: str, metadata: dict[str, str], usage: Any,
        vllm_order: bool, indent: int | None) -> None:
    # The whole decode renames every `"model": <snapshot>` pair; one in metadata is another
    # value, which only the fast path leaves alone.
    assume(model not in metadata.values())
    output = [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    if vllm_order:  # vLLM's field order: metadata before model
        obj: dict[str, Any] = {"id": up_id, "created_at": 1, "instructions": text,
                               "metadata": metadata, "model": model, "object": "response",
                               "output": output, "status": "completed", "usage": usage}
    else:
        obj = {"id": up_id, "object": "response", "status": "completed", "instructions": text,
               "model": model, "output": output, "usage": usage, "user": None,
               "metadata": metadata}
    body = json.dumps(obj, indent=indent, ensure_ascii=indent is None).encode()
    kept = call(store=False)
    reply = parse_reply(kept, target(model), body, "up")
    assert json.loads(reply.body) == {**obj, "id": GATEWAY_ID, "model": "gpt"}
    assert reply.usage == from_responses(usage)
    assert kept.upstream_response_id == up_id


def test_a_model_name_with_escapes_is_read_by_the_whole_decode() -> None:
    obj = {"id": "resp_1", "object": "response", "model": "caf\u00e9", "output": [],
           "tools": [{"type": "image_generation", "model": "gpt-image-1"}],
           "usage": {"input_tokens": 1, "output_tokens": 2}}
    body = json.dumps(obj).encode()  # `"model": "caf\\u00e9"`: escaped on the wire
    reply = parse_reply(call(store=False), target("x"), body, "up")
    out = json.loads(reply.body)
    assert out["tools"][0]["model"] == "gpt-image-1" and out["id"] == GATEWAY_ID



@pytest.mark.parametrize("usage", [
    {"input_tokens": -5, "output_tokens": 3}, {"input_tokens": True, "output_tokens": 2},
    {"input_tokens": None}, {"input_tokens": 4.0, "output_tokens": 1},
    {"input_tokens": 9, "input_tokens_details": []},
    {"input_tokens": 9, "input_tokens_details": {"cached_tokens": None}},
    {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 12}},
    {"output_tokens": 5, "output_tokens_details": {"reasoning_tokens": -1}}, None, "x",
])
@pytest.mark.parametrize("up_id", ["resp_x1", 7, None])
def test_counts_and_ids_of_any_type_read_as_the_whole_decode(usage: Any, up_id: Any) -> None:
    # The fast path decodes typed fields; a value of another type (null, a bool, a float, a
    # negative count, a list for details, an id that is a number) must read as the whole
    # decode reads it, never differently.
    obj = {"id": up_id, "object": "response", "model": SNAPSHOT, "output": [], "usage": usage}
    body = json.dumps(obj).encode()
    stored, kept = call(), call(store=False)
    whole = parse_reply(stored, target(SNAPSHOT), body, "up")
    fast = parse_reply(kept, target(SNAPSHOT), body, "up")
    assert fast.body == whole.body
    assert fast.usage == whole.usage
    assert kept.upstream_response_id == stored.upstream_response_id
