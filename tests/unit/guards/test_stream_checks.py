"""A stream's length cap and classifier segments, and the admission worst case of `model`
guards: pure logic, the classifier replaced by a function of the text it is asked about."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.records import RequestRecord
from gateway.guards import stream_checks
from gateway.guards.compiled import CompiledGuard, compile_guards
from gateway.guards.stream_checks import LengthCap, SegmentCheck, output_char_cap
from gateway.guards.verdicts import VerdictClock
from gateway.guards.window import StreamBlocked
from gateway.policy.guards import Guard
from tests.unit.guards.test_window import openai_chunk, text_of

DONE = b"data: [DONE]\n\n"


def compiled(**kw: Any) -> CompiledGuard:
    [g] = compile_guards({"g": Guard.model_validate({"stage": "output", **kw})})
    return g


def record() -> RequestRecord:
    return RequestRecord("r", datetime.now(UTC), "t", "k", "m", "chat", True, 500, 0.0)


def clock(rec: RequestRecord) -> VerdictClock:
    return VerdictClock(rec, "g", "output")


def feed_all(step: Any, chunks: list[bytes]) -> tuple[bytes, StreamBlocked | None]:
    async def go() -> tuple[bytes, StreamBlocked | None]:
        out = b""
        for c in chunks:
            try:
                out += await step.feed(c)
            except StreamBlocked as e:
                return out + e.release, e
        return out + await step.flush(), None
    return asyncio.run(go())


# ---- length -------------------------------------------------------------------------------

def test_the_cap_is_characters_or_four_per_token_whichever_is_lower() -> None:
    assert output_char_cap(compiled(detector={"kind": "length", "max_chars": 10})) == 10
    assert output_char_cap(compiled(detector={"kind": "length", "max_tokens": 2})) == 8
    assert output_char_cap(compiled(detector={"kind": "length", "max_chars": 5,
                                              "max_tokens": 2})) == 5


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=12),
       cap=st.integers(min_value=1, max_value=60))
def test_a_blocking_cap_lets_exactly_the_first_cap_characters_through(
        parts: list[str], cap: int) -> None:
    rec = record()
    step = LengthCap("openai", compiled(detector={"kind": "length", "max_chars": cap}),
                     clock(rec))
    chunks = [openai_chunk(p) for p in parts] + [openai_chunk(None, "stop"), DONE]
    out, blocked = feed_all(step, chunks)
    whole = "".join(parts)
    assert text_of(out) == whole[:cap]
    assert (blocked is not None) == (len(whole) > cap)
    assert rec.guards is not None
    assert rec.guards[0]["verdict"] == ("block" if blocked else "pass")


def test_a_flagging_cap_passes_everything_and_flags_once() -> None:
    rec = record()
    step = LengthCap("openai", compiled(detector={"kind": "length", "max_chars": 3},
                                        action="flag"), clock(rec))
    chunks = [openai_chunk("abcd"), openai_chunk("efgh"), DONE]
    out, blocked = feed_all(step, chunks)
    assert blocked is None and out == b"".join(chunks)
    assert rec.guards == [{**rec.guards[0], "verdict": "flag", "labels": ["length"]}]


# ---- classifier segments ------------------------------------------------------------------

def segments(monkeypatch: pytest.MonkeyPatch, unsafe: str | None = None,
             no_verdict: bool = False) -> list[str]:
    """Replace the classifier: it records what it was asked, and refuses text holding
    `unsafe` (or everything, with `no_verdict`: a fail_closed timeout)."""
    asked: list[str] = []

    async def ask(rt: Any, g: Any, text: str, rec: Any, clk: VerdictClock, where: str,
                  **kw: Any) -> str | None:
        asked.append(text)
        if no_verdict:
            clk.worse("fail_closed", ["classifier_error"])
            return "no verdict"
        if unsafe is not None and unsafe in text:
            clk.worse("block", ["S1"])
            return "unsafe"
        return None
    monkeypatch.setattr(stream_checks, "ask", ask)
    return asked


def seg_step(rec: RequestRecord, size: int = 64) -> SegmentCheck:
    g = compiled(detector={"kind": "model", "model": "lg", "segment_chars": size})
    return SegmentCheck(None, rec, "openai", g, clock(rec))  # type: ignore[arg-type]


def test_nothing_is_released_before_its_segment_is_classified(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = segments(monkeypatch)
    step = seg_step(record())

    async def go() -> list[bytes]:
        outs = [await step.feed(openai_chunk(None))]  # the role chunk: no text, goes now
        outs += [await step.feed(openai_chunk("x" * 30)) for _ in range(3)]
        outs.append(await step.feed(openai_chunk(None, "stop") + DONE))
        return outs
    outs = asyncio.run(go())
    assert outs[0] == openai_chunk(None)
    assert outs[1] == outs[2] == b""  # 30, 60 characters: the segment is not complete
    assert text_of(outs[3]) == "x" * 90  # 90 ≥ 64: classified, released
    assert asked == ["x" * 90]
    assert outs[4] == openai_chunk(None, "stop") + DONE  # the end, no text left to ask


def test_each_call_gets_a_quarter_segment_of_context_and_the_unsafe_one_is_withheld(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = segments(monkeypatch, unsafe="BAD")
    rec = record()
    chunks = [openai_chunk("a" * 40), openai_chunk("b" * 30), openai_chunk("c" * 20 + "BAD"),
              openai_chunk("d" * 50), openai_chunk(None, "stop"), DONE]
    out, blocked = feed_all(seg_step(rec), chunks)
    assert blocked is not None and blocked.why == "unsafe"
    assert text_of(out) == "a" * 40 + "b" * 30
    assert asked == ["a" * 40 + "b" * 30, "b" * 16 + "c" * 20 + "BAD" + "d" * 50]
    assert rec.guards is not None and rec.guards[0]["verdict"] == "block"


def test_fail_closed_releases_no_text_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    segments(monkeypatch, no_verdict=True)
    out, blocked = feed_all(seg_step(record()), [openai_chunk("hello"),
                                                 openai_chunk(None, "stop"), DONE])
    assert blocked is not None and text_of(out) == ""


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=10),
       size=st.integers(min_value=64, max_value=128))
def test_a_safe_stream_comes_out_whole_and_in_order(parts: list[str], size: int) -> None:
    asked: list[str] = []

    async def ask(*a: Any, **kw: Any) -> None:
        asked.append(a[2])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_checks, "ask", ask)
        chunks = [openai_chunk(p) for p in parts] + [openai_chunk(None, "stop"), DONE]
        out, blocked = feed_all(seg_step(record(), size), chunks)
    assert blocked is None and out == b"".join(chunks)
    # Every character was asked about once as new text (after the context carried over).
    segs: list[str] = []
    for i, a in enumerate(asked):
        segs.append(a[0 if i == 0 else min(size // 4, len(segs[-1])):])
    assert "".join(segs) == "".join(parts)
    assert all(len(seg) >= size for seg in segs[:-1])
    assert len(asked) <= len("".join(parts)) // size + 1


# ---- admission ----------------------------------------------------------------------------

def test_the_worst_case_of_input_reply_and_stream_checks() -> None:
    from types import SimpleNamespace

    from gateway.guards.admission import GuardSpend
    from gateway.policy.models import Policy

    policy = Policy.model_validate({
        "providers": {"p": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"lg": {"deployments": [{"provider": "p", "model": "lg",
                                           "pricing": [{"input": "1", "output": "2"}]}]}},
        "guards": {"g": {"detector": {"kind": "model", "model": "lg",
                                      "segment_chars": 1000}, "stage": "both"}}})
    from gateway.accounting.pricing import PriceBook
    rt: Any = SimpleNamespace(prices=PriceBook.from_policy(policy))
    guards = compile_guards(policy.guards)
    spend = GuardSpend(policy, rt, guards)
    [g] = guards
    # Input: the prompt + 16 of template, 32 of verdict.
    tokens, cost = spend.worst_case([(g, "input")], False, "t", 100, 500)
    assert tokens == 100 + 16 + 32
    assert cost == (Decimal(116) * 1 + Decimal(32) * 2) / 1_000_000
    # A reply: one call on max_tokens of reply.
    assert spend.worst_case([(g, "output")], False, "t", 100, 500)[0] == 500 + 16 + 32
    # A stream: ⌈2000 / 1000⌉ + 1 = 3 calls, each with 63 tokens of context.
    calls = 3
    assert spend.worst_case([(g, "output")], True, "t", 100, 500)[0] == \
        500 + calls * (63 + 16) + calls * 32


def test_empty_text_is_passed_without_asking_the_classifier() -> None:
    from gateway.guards.model_check import ask

    rec = record()
    g = compiled(detector={"kind": "model", "model": "lg"})
    # No runtime: a call would fail; none is made for text with nothing to judge.
    assert asyncio.run(ask(None, g, " \n", rec, clock(rec), "reply")) is None  # type: ignore[arg-type]
    assert rec.attempts == [] and rec.guards is not None
    assert rec.guards[0]["verdict"] == "pass"
