"""The cache's pieces without a gateway: the memory store's bounds, which replies are worth
storing, and a stream assembled into the completion a replay turns back into the same text."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from gateway.accounting.usage import Usage
from gateway.policy.cache import resolve
from gateway.policy.models import Policy
from gateway.providers.base import Target
from gateway.stages.answer import replay_chunks
from gateway.stages.base import ReplyInfo
from gateway.stages.cache import CacheRun, CacheStage, decode, encode
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
    run.keep_reply = True
    return run


def _completion(finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi", **message},
         "logprobs": None, "finish_reason": finish}]}


def _stored(run: CacheRun, obj: dict[str, Any], wire: Any = "openai") -> bool:
    return run._storable(obj, wire) == "stored"


def test_only_complete_single_answers_are_stored() -> None:
    run = _run_with()
    assert _stored(run, _completion())
    assert not _stored(run, _completion("length"))
    assert not _stored(run, _completion("content_filter"))
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert run._storable(_completion("tool_calls", tool_calls=calls), "openai") == "tool_calls"
    assert _stored(_run_with(cache_tool_calls=True), _completion("tool_calls", tool_calls=calls))
    two = _completion()
    two["choices"].append(dict(two["choices"][0], index=1))
    assert not _stored(run, two)
    logprobs = _completion()
    logprobs["choices"][0]["logprobs"] = {"content": []}
    assert not _stored(run, logprobs)


def test_native_replies_are_stored_only_when_complete() -> None:
    run, tools = _run_with(), _run_with(cache_tool_calls=True)
    msg = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}],
           "stop_reason": "end_turn"}
    assert _stored(run, msg, "anthropic")
    assert not _stored(run, {**msg, "stop_reason": "max_tokens"}, "anthropic")
    use = {**msg, "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
           "stop_reason": "tool_use"}
    assert not _stored(run, use, "anthropic") and _stored(tools, use, "anthropic")
    assert not _stored(run, {**msg, "content": [{"type": "server_tool_use"}]}, "anthropic")
    resp = {"object": "response", "status": "completed", "error": None, "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}
    assert _stored(run, resp, "responses")
    assert not _stored(run, {**resp, "status": "incomplete"}, "responses")
    fc = {**resp, "output": [{"type": "function_call", "name": "f", "arguments": "{}"}]}
    assert not _stored(run, fc, "responses") and _stored(tools, fc, "responses")
    # A built-in tool fetched fresh data: never replayed.
    assert not _stored(tools, {**resp, "output": [{"type": "web_search_call"}]}, "responses")


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
    # The reply's own usage goes: the hit reports the stored one, in OpenAI's shape.
    assert ok.body == {**_completion(), "usage": usage.to_openai()}
    assert "total_tokens" in ok.body["usage"]  # not the reply's own {"prompt_tokens": 4}
    unpriced = decode(encode(reply, None, info))
    assert unpriced is not None and unpriced.usage is None and "usage" not in unpriced.body
    assert decode(b"not json") is None
    assert decode(b'{"v": 1}\n[]') is None
    assert decode(b'[1, "openai", "d", "p", "u", null]\n{}') is None  # another format version
    assert decode(b'[2, "gemini", "d", "p", "u", null]\n{}') is None  # no such shape


def test_memory_store_counts_bytes_and_tells_why_entries_go() -> None:
    gone: list[str] = []
    s = MemoryStore(max_entries=2, on_evict=gone.append)
    s.put_soon("a", b"12345", 60)
    s.put_soon("a", b"123", 60)  # replaced, not evicted
    s.put_soon("b", b"1", 60)
    assert s.size() == (2, 4) and gone == []
    s.put_soon("c", b"22", 60)  # over the bound: the least recently used goes
    assert gone == ["lru"] and s.size() == (2, 3)
    s.put_soon("d", b"4444", 0.000001)
    assert _run(s.get("d")) is None and gone == ["lru", "lru", "expired"]
    assert s.size() == (1, 2)


def test_a_reply_is_stored_on_the_next_loop_turn_not_on_the_request_path() -> None:
    policy = Policy.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": [{"provider": "p", "model": "u"}]}},
        "cache": {}})
    stage = CacheStage(policy)
    run = _run_with()
    run.stage, run.key = stage, "k"
    run.ctx = SimpleNamespace(call=SimpleNamespace(model="m"),  # type: ignore[assignment]
                              principal=SimpleNamespace(tenant="t"))
    info = ReplyInfo(Target("m", policy.models["m"].deployments[0], "p"), "openai", "chat",
                     Usage(input_uncached=1, output=1))
    body = json.dumps(_completion()).encode()

    async def go() -> tuple[bool, bool]:
        assert await run.reply(body, info) == body  # the bytes pass unchanged
        stored_at_once = _stored_now(stage)
        await asyncio.sleep(0)  # the loop turn after the handler handed the reply on
        return stored_at_once, _stored_now(stage)

    assert _run(go()) == (False, True)


def _stored_now(stage: CacheStage) -> bool:
    store = stage.store
    assert isinstance(store, MemoryStore)
    return store.size()[0] == 1


def test_a_hot_chat_entry_is_decoded_once_and_afresh_once_rewritten() -> None:
    policy = Policy.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": [{"provider": "p", "model": "u"}]}},
        "cache": {}})
    stage = CacheStage(policy)
    info = ReplyInfo(Target("m", policy.models["m"].deployments[0], "p"), "openai", "chat",
                     Usage(input_uncached=1, output=1))
    raw = encode(json.dumps(_completion()).encode(), info.usage, info)
    first = stage.answer("k", raw)
    assert first is not None and stage.answer("k", raw) is first
    again = bytes(bytearray(raw))  # the same entry written again: another object
    fresh = stage.answer("k", again)
    assert fresh is not first and fresh == first and stage.answer("k", again) is fresh
    assert stage.answer("bad", b"not an entry") is None
    # A native (Anthropic) answer is never kept: its replay may be held by the ingress.
    native = ReplyInfo(info.target, "anthropic", "chat", info.usage)
    raw_native = encode(b'{"type":"message","content":[]}', info.usage, native)
    assert stage.answer("n", raw_native) is not stage.answer("n", raw_native)


def test_reply_bytes_are_checked_as_the_decoded_reply_would_be() -> None:
    """`_store_bytes` reads only what the check needs; its outcome is the dict check's."""
    def outcome(body: bytes, keep: bool = True) -> str | None:
        run = _run_with()
        run.keep_reply = keep
        seen: list[str] = []
        run._store = lambda result, *_: seen.append(result)  # type: ignore[method-assign]
        run._store_bytes(body, SimpleNamespace(wire="openai", usage=None))  # type: ignore[arg-type]
        return seen[0] if seen else None

    for obj in (_completion(), _completion("length"), _completion("tool_calls"),
                _completion(tool_calls=[{"id": "c"}]), {"choices": []}, {"choices": None},
                {"choices": [1]}, {"choices": [{"message": "text", "finish_reason": "stop"}]},
                {"choices": [{"message": {}, "logprobs": {"content": []},
                              "finish_reason": "stop"}]}, {}):
        assert outcome(json.dumps(obj).encode()) == _run_with()._storable(obj, "openai"), obj
    assert outcome(b"not json") is None and outcome(b"[1]") is None  # nothing, not counted
    assert outcome(json.dumps(_completion()).encode(), keep=False) == "store_false"
