"""The stream window: a match split across chunks is caught, at most a window is held back,
and what passes reaches the client unchanged and in order."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.guards.patterns import deny_list
from gateway.guards.pii import PiiDetector
from gateway.guards.window import Check, StreamBlocked, WindowScanner

PHRASE = deny_list(["launch code"])


def openai_chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    obj = {"object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def scanner(checks: list[Check], window: int = 32, wire: str = "openai") -> WindowScanner:
    return WindowScanner(wire, window, checks, lambda *a: None)


def text_of(stream: bytes) -> str:
    out = ""
    for ev in stream.split(b"\n\n"):
        if ev.startswith(b"data: {"):
            obj = json.loads(ev[6:])
            for c in obj.get("choices") or []:
                out += c.get("delta", {}).get("content") or ""
    return out


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(alphabet="abc ", max_size=80), suffix=st.text(alphabet="abc ", max_size=40),
       cuts=st.lists(st.integers(0, 200), max_size=12))
def test_a_phrase_split_anywhere_is_blocked_and_never_released(
        prefix: str, suffix: str, cuts: list[int]) -> None:
    text = prefix + " launch code " + suffix
    s = scanner([("p", "block", PHRASE.find, "")])
    released = b""
    with pytest.raises(StreamBlocked):
        for piece in split(text, cuts):
            released += s.feed(openai_chunk(piece))
        released += s.feed(openai_chunk(None, "stop") + b"data: [DONE]\n\n")
    assert "launch code" not in text_of(released)
    assert "launch" not in text_of(released)[len(prefix):]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcd \n", max_size=200),
       cuts=st.lists(st.integers(0, 300), max_size=20), window=st.integers(8, 64))
def test_clean_text_passes_unchanged_holding_at_most_a_window(
        text: str, cuts: list[int], window: int) -> None:
    s = scanner([("p", "block", PHRASE.find, "")], window)
    released = b""
    sent = ""
    longest = 0
    for piece in split(text, cuts):
        released += s.feed(openai_chunk(piece))
        sent += piece
        longest = max(longest, len(piece))
        held = len(sent) - len(text_of(released))
        # At most the window, plus the oldest held chunk (chunks are released whole).
        assert held <= window - 1 + longest
    released += s.feed(openai_chunk(None, "stop") + b"data: [DONE]\n\n")
    assert text_of(released) == text
    assert released.endswith(b"data: [DONE]\n\n")


def test_redaction_across_chunks_keeps_the_stream_shape() -> None:
    cards = PiiDetector(["card"])
    s = scanner([("c", "redact", cards.find, "[{label}]")], window=24)
    out = b""
    for piece in ["card 4111 11", "11 1111 1", "111 ok", " and then some more text"]:
        out += s.feed(openai_chunk(piece))
    out += s.feed(openai_chunk(None, "stop") + b"data: [DONE]\n\n")
    assert text_of(out) == "card [card] ok and then some more text"
    assert all(ev.startswith(b"data: ") for ev in out.split(b"\n\n") if ev)


def test_a_match_at_the_end_waits_until_it_cannot_grow() -> None:
    mails = PiiDetector(["email"])
    s = scanner([("m", "redact", mails.find, "[{label}]")], window=64)
    # `bob@example.co` is an address already, but `.uk` is still to come.
    out = s.feed(openai_chunk("mail bob@example.co"))
    out += s.feed(openai_chunk(".uk thanks")) + s.feed(b"data: [DONE]\n\n")
    assert text_of(out) == "mail [email] thanks"


def test_flag_reports_once_and_changes_nothing() -> None:
    seen: list[Any] = []
    s = WindowScanner("openai", 16, [("f", "flag", PHRASE.find, "")],
                      lambda *a: seen.append(a))
    out = b"".join(s.feed(openai_chunk(t)) for t in ["the launch", " code", " again launch code"])
    out += s.feed(b"data: [DONE]\n\n")
    assert text_of(out) == "the launch code again launch code"
    assert seen == [("f", "flag", ["deny_list"])]


def test_anthropic_text_deltas_are_windowed() -> None:
    def delta(t: str) -> bytes:
        obj = {"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": t}}
        return b"event: content_block_delta\ndata: " + json.dumps(obj).encode() + b"\n\n"
    s = scanner([("p", "block", PHRASE.find, "")], wire="anthropic")
    assert s.feed(delta("the laun")) == b""
    with pytest.raises(StreamBlocked):
        s.feed(delta("ch code"))


def test_responses_done_events_are_checked_whole() -> None:
    s = scanner([("p", "block", PHRASE.find, "")], window=8, wire="responses")
    done = {"type": "response.output_text.done", "text": "the launch code"}
    with pytest.raises(StreamBlocked):
        s.feed(b"event: response.output_text.done\ndata: " + json.dumps(done).encode()
               + b"\n\n")


def test_crlf_events_and_a_tail_without_boundary_are_kept() -> None:
    s = scanner([("p", "block", PHRASE.find, "")], window=8)
    crlf = openai_chunk("hello there friend").replace(b"\n\n", b"\r\n\r\n")
    out = s.feed(crlf + b": comment without its blank line")
    out += s.feed(b"data: [DONE]\r\n\r\n")
    assert text_of(out.replace(b"\r\n", b"\n")) == "hello there friend"
    assert b": comment without its blank line" in out and out.endswith(b"[DONE]\r\n\r\n")
