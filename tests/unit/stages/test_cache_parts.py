"""The cache's pieces without a gateway: the memory store's bounds, which replies are worth
storing, and a stream assembled into the completion a replay turns back into the same text."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.accounting.usage import Usage
from gateway.policy.cache import resolve
from gateway.policy.models import Policy
from gateway.providers.base import Target
from gateway.stages.answer import replay_chunks
from gateway.stages.base import ReplyInfo
from gateway.stages.cache import CacheRun, decode, encode
from gateway.stages.cache_store import MemoryStore
from gateway.stages.cache_stream import StreamCapture


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_memory_store_bounds_entries_lru_and_expires() -> None:
    s = MemoryStore(max_entries=2)
    _run(s.put("a", b"1", 60))
    _run(s.put("b", b"2", 60))
    assert _run(s.get("a")) == b"1"  # a is now the most recent
    _run(s.put("c", b"3", 60))
    assert _run(s.get("b")) is None and _run(s.get("a")) == b"1" and len(s) == 2
    _run(s.put("d", b"4", 0.000001))
    assert _run(s.get("d")) is None


def _run_with(**rule: Any) -> CacheRun:
    run = CacheRun.__new__(CacheRun)
    run.rule = resolve(default_enabled=True).model_copy(update=rule)
    return run


def _completion(finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi", **message},
         "logprobs": None, "finish_reason": finish}]}


def test_only_complete_single_answers_are_stored() -> None:
    run = _run_with()
    assert run.storable(_completion())
    assert not run.storable(_completion("length"))
    assert not run.storable(_completion("content_filter"))
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert not run.storable(_completion("tool_calls", tool_calls=calls))
    assert _run_with(cache_tool_calls=True).storable(_completion("tool_calls", tool_calls=calls))
    two = _completion()
    two["choices"].append(dict(two["choices"][0], index=1))
    assert not run.storable(two)
    logprobs = _completion()
    logprobs["choices"][0]["logprobs"] = {"content": []}
    assert not run.storable(logprobs)


def test_stream_capture_reassembles_what_a_replay_sends() -> None:
    body = {"id": "chatcmpl-1", "created": 1, "model": "m", **_completion(
        content="Hello there", tool_calls=[{"id": "c1", "type": "function", "function": {
            "name": "lookup", "arguments": "{\"q\": 1}"}}])}
    body["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    sse = replay_chunks(body, include_usage=True)
    events = [json.loads(e[6:]) for e in sse.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert events[-1]["usage"]["total_tokens"] == 5 and events[-1]["choices"] == []
    assert sse.endswith(b"data: [DONE]\n\n")
    cap = StreamCapture.__new__(StreamCapture)
    StreamCapture.__init__(cap, None, None)  # type: ignore[arg-type]
    # Fed in runs of whole events, as the upstream translator emits them.
    parts = sse.split(b"\n\n")
    _run(cap.feed(b"\n\n".join(parts[:2]) + b"\n\n"))
    _run(cap.feed(b"\n\n".join(parts[2:])))
    got = cap.completion()
    assert got["choices"][0]["message"]["content"] == "Hello there"
    assert got["choices"][0]["message"]["tool_calls"] == body["choices"][0]["message"][
        "tool_calls"]
    assert got["choices"][0]["finish_reason"] == "stop" and cap.ok


def test_an_entry_round_trips_and_an_unreadable_one_is_a_miss() -> None:
    policy = Policy.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": [{"provider": "p", "model": "u"}]}}})
    info = ReplyInfo(Target("m", policy.models["m"].deployments[0], "p"), "openai", "chat")
    usage = Usage(input_uncached=1, cache_read=3, output=2, reasoning=4)
    reply = json.dumps({**_completion(), "usage": {"prompt_tokens": 4}}).encode()
    ok = decode(encode(reply, usage, info))
    assert ok is not None and ok.usage == usage
    assert (ok.deployment, ok.provider, ok.upstream_model) == ("p/u", "p", "u")
    assert ok.body == _completion()  # the reply's own usage goes: the hit reports the stored
    assert decode(encode(reply, None, info)).usage is None  # type: ignore[union-attr]
    assert decode(b"not json") is None
    assert decode(b'{"v": 1}\n[]') is None
    assert decode(b'{"v": 2, "deployment": "d"}\n{}') is None  # another format version
