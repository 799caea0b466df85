"""Native cache entries without a gateway: an Anthropic message replayed as its event stream
and assembled back from it (thinking with its signature, tool input, stop reason, usage), and
a Response replayed as typed events numbered from 0 that end with the whole object."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.call import Call
from gateway.stages.cache_native import AnthropicCapture
from gateway.stages.cache_replay import anthropic_events, response_events, response_object

MESSAGE: dict[str, Any] = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
    "content": [{"type": "thinking", "thinking": "Let me see.", "signature": "sig=="},
                {"type": "text", "text": "Hello there"},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                 "input": {"q": "ü", "n": [1, 2]}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 7, "cache_read_input_tokens": 2, "output_tokens": 9}}


def _events(sse: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in sse.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            out.append((name.removeprefix(b"event: ").decode(),
                        json.loads(data.removeprefix(b"data: "))))
    return out


def test_an_anthropic_replay_assembles_back_into_the_same_message() -> None:
    sse = anthropic_events(MESSAGE)
    names = [n for n, _ in _events(sse)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 3
    cap = AnthropicCapture(None, None)  # type: ignore[arg-type]
    half = len(sse) // 2
    cut = sse.rfind(b"\n\n", 0, half) + 2  # fed in runs of whole events
    asyncio.run(cap.feed(sse[:cut]))
    asyncio.run(cap.feed(sse[cut:]))
    assert cap.assembled() == MESSAGE


def test_a_response_replay_is_numbered_and_ends_with_the_whole_object() -> None:
    call = Call(endpoint="chat", model="pub", body={}, raw=b"", stream=True, request_id="r",
                ingress="responses", native_body={"store": False, "metadata": {"k": "v"}},
                response_id="resp_new")
    stored = {"id": "resp_old", "object": "response", "created_at": 1, "status": "completed",
              "model": "up", "store": True, "completed_at": 2, "metadata": {},
              "output": [
                  {"type": "reasoning", "id": "rs_1", "summary": []},
                  {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": "Hi", "annotations": []}]},
                  {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f",
                   "arguments": "{}", "status": "completed"}],
              "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}
    obj = response_object(stored, call)
    assert (obj["id"], obj["model"], obj["store"], obj["metadata"]) == (
        "resp_new", "pub", False, {"k": "v"})
    assert call.final_response is obj and obj["previous_response_id"] is None
    events = [e for _, e in _events(response_events(obj))]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[0]["response"]["output"] == []
    assert events[-1] == {"type": "response.completed", "response": obj,
                          "sequence_number": len(events) - 1}
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["Hi"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert done == [0, 1, 2]
