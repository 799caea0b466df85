"""Which strings of a body are text, and rewriting them without touching the rest."""

from __future__ import annotations

from gateway.guards.text import rewrite, texts


def test_chat_request_texts_skip_structure() -> None:
    body = {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "hello"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{\"q\": \"x\"}"}}]}],
        "user": "u-1", "temperature": 0}
    assert texts(body) == ["be brief", "hello", "{\"q\": \"x\"}"]


def test_anthropic_and_responses_bodies() -> None:
    anthropic = {"model": "m", "system": [{"type": "text", "text": "sys"}],
                 "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert texts(anthropic) == ["sys", "hi"]
    responses = {"model": "m", "instructions": "inst", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "q"}]}]}
    assert texts(responses) == ["inst", "q"]
    assert texts({"model": "e", "input": ["a", "b"]}) == ["a", "b"]


def test_replies_of_each_format() -> None:
    chat = {"choices": [{"message": {"role": "assistant", "content": "answer"},
                         "finish_reason": "stop"}], "model": "m"}
    assert texts(chat) == ["answer"]
    messages = {"content": [{"type": "text", "text": "a1"}], "stop_reason": "end_turn"}
    assert texts(messages) == ["a1"]
    resp = {"output": [{"type": "message", "id": "msg_1",
                        "content": [{"type": "output_text", "text": "r1", "annotations": []}]}]}
    assert texts(resp) == ["r1"]


def test_rewrite_copies_only_what_changed() -> None:
    keep = {"role": "system", "content": "fine"}
    body = {"model": "m", "messages": [keep, {"role": "user", "content": "secret here"}]}
    new = rewrite(body, lambda s: s.replace("secret", "[x]"))
    assert new["messages"][1]["content"] == "[x] here"
    assert new["messages"][0] is keep
    assert body["messages"][1]["content"] == "secret here"  # the original is untouched
    assert rewrite(body, lambda s: s) is body
