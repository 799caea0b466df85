"""`length` and `model` guards on replies, through the real gateway with the official SDK:
a whole reply is checked once; a stream is cut at a length cap, or checked by its classifier
segment by segment (held back only a segment at a time), failing open or closed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.ledger_records import record
from tests.integration.test_guards import CLASSIFIER, _client, _policy

HI: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def setup(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway], tmp_path: Any
          ) -> Callable[..., tuple[Gateway, dict[str, FakeOpenAI]]]:
    def make(guards: dict[str, Any]) -> tuple[Gateway, dict[str, FakeOpenAI]]:
        fs = {"ext": fakes("ext"), "gpu": fakes("gpu", vllm=True), "cls": fakes("cls", vllm=True)}
        return gateway(_policy(tmp_path, fs, guards, **CLASSIFIER)), fs
    return make


def _length(action: str = "block", **bound: int) -> dict[str, Any]:
    return {"cap": {"detector": {"kind": "length", **bound}, "stage": "output",
                    "action": action}}


def _model(on_error: str = "fail_closed", segment: int = 64, timeout: float = 5.0,
           action: str = "block") -> dict[str, Any]:
    return {"judge": {"detector": {"kind": "model", "model": "guard-model",
                                   "segment_chars": segment, "timeout_s": timeout,
                                   "on_error": on_error},
                      "stage": "output", "action": action}}


def _streamed(gw: Gateway, rid: str) -> tuple[str, BaseException | None]:
    got, error = "", None
    try:
        for chunk in _client(gw, rid).chat.completions.create(
                model="ext-chat", messages=HI, stream=True):
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
    except openai.APIError as e:
        error = e
    return got, error


def _says_unsafe_about(fake: FakeOpenAI, word: str) -> None:
    """The classifier fake answers Llama Guard's `unsafe\\nS1` when the text it is asked
    about holds `word`, else `safe` (it records the request before it answers)."""
    def verdict() -> list[str]:
        asked = fake.bodies("/chat/completions")[-1]["messages"][0]["content"]
        return ["unsafe", "\nS1"] if word in asked else ["safe"]
    fake.text = verdict  # type: ignore[method-assign]


# ---- length -------------------------------------------------------------------------------

def test_a_reply_over_the_length_cap_is_refused_and_still_billed(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_length(max_chars=20))
    fs["ext"].text = lambda: ["x" * 15, "y" * 10]  # type: ignore[method-assign]
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, "len-1").chat.completions.create(model="ext-chat", messages=HI)
    body = e.value.body
    assert isinstance(body, dict) and body["code"] == "content_policy_violation"
    assert "'cap' guard" in body["message"] and "longer than this policy allows" in \
        body["message"]
    rec = record(tmp_path, client_id="len-1")
    assert rec.status == 400 and [a.outcome for a in rec.attempts] == ["ok"]
    assert rec.attempts[0].usage is not None and rec.attempts[0].usage.output == 2
    assert [(v["stage"], v["verdict"], v["labels"]) for v in rec.guards or []] == [
        ("output", "block", ["length"])]

    # Under the cap (tokens as the upstream reports them: 2 ≤ 2) it passes untouched.
    gw2, fs2 = setup(_length(max_tokens=2))
    fs2["ext"].text = lambda: ["x" * 15, "y" * 10]  # type: ignore[method-assign]
    reply = _client(gw2, "len-2").chat.completions.create(model="ext-chat", messages=HI)
    assert reply.choices[0].message.content == "x" * 15 + "y" * 10


def test_a_stream_is_cut_at_the_length_cap_with_content_filter(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_length(max_chars=12))
    fs["ext"].text = lambda: ["Hello ", "there, ", "world ", "and more."]  # type: ignore
    got, error = "", None
    finish = []
    try:
        for chunk in _client(gw, "len-3").chat.completions.create(
                model="ext-chat", messages=HI, stream=True):
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
                finish.append(chunk.choices[0].finish_reason)
    except openai.APIError as e:
        error = e
    # Exactly the first 12 characters reached the client (the crossing chunk was cut), then
    # the content_filter chunk and the error event the SDK raises on.
    assert got == "Hello there,"
    assert "content_filter" in finish and error is not None and "'cap' guard" in str(error)
    rec = record(tmp_path, client_id="len-3")
    assert rec.attempts[-1].outcome == "blocked"
    assert [(v["verdict"], v["labels"]) for v in rec.guards or []] == [("block", ["length"])]


def test_a_flagging_length_cap_lets_the_stream_through_and_records_it(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_length("flag", max_tokens=2))  # 2 tokens: 8 characters on a stream
    got, error = _streamed(gw, "len-4")
    assert error is None and got == "".join(fs["ext"].text())
    rec = record(tmp_path, client_id="len-4")
    assert rec.status == 200 and rec.attempts[-1].outcome == "ok"
    assert [(v["verdict"], v["labels"]) for v in rec.guards or []] == [("flag", ["length"])]


# ---- model --------------------------------------------------------------------------------

def test_a_reply_the_classifier_calls_unsafe_is_refused(setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_model())
    fs["ext"].text = lambda: ["how to ", "do the forbidden thing"]  # type: ignore
    _says_unsafe_about(fs["cls"], "forbidden")
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, "mo-1").chat.completions.create(model="ext-chat", messages=HI)
    assert "'judge' guard" in e.value.body["message"]  # type: ignore[index]
    # The classifier was asked about the reply's text, as the user would have read it.
    assert fs["cls"].bodies()[0]["messages"][0]["content"] == "how to do the forbidden thing"
    rec = record(tmp_path, client_id="mo-1")
    # The classifier's attempt goes before the serving one, which stays last; both billed.
    assert [a.outcome for a in rec.attempts] == ["guard", "ok"]
    assert rec.attempts[0].cost_usd > 0 and rec.cost_usd == rec.attempts[0].cost_usd
    assert [(v["stage"], v["verdict"], v["labels"]) for v in rec.guards or []] == [
        ("output", "block", ["S1"])]

    fs["ext"].text = lambda: ["a kind ", "answer"]  # type: ignore[method-assign]
    reply = _client(gw, "mo-2").chat.completions.create(model="ext-chat", messages=HI)
    assert reply.choices[0].message.content == "a kind answer"
    rec = record(tmp_path, client_id="mo-2")
    assert [a.outcome for a in rec.attempts] == ["guard", "ok"] and rec.status == 200
    assert rec.attempts[-1].deployment == "ext/gpt-x"


LONG = ["First segment of a perfectly fine answer, ", "it goes on a while. ",
        "Second part: still fine, nothing here. ", "Then the forbidden ", "recipe follows. ",
        "And a tail that never streams."]


def test_a_stream_is_classified_segment_by_segment_and_cut_at_the_unsafe_one(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_model(segment=64))
    fs["ext"].text = lambda: LONG  # type: ignore[method-assign]
    fs["ext"].chunk_delay = 0.02
    _says_unsafe_about(fs["cls"], "forbidden")
    got, error = _streamed(gw, "ms-1")
    assert error is not None and "'judge' guard" in str(error)
    # The segments before the unsafe one reached the client; nothing of the unsafe one did.
    assert got == "".join(LONG[:3]) and "forbidden" not in got
    asked = [b["messages"][0]["content"] for b in fs["cls"].bodies()]
    assert len(asked) == 2 and asked[0] == "".join(LONG[:3])
    # The second call carries the end of the first segment (a quarter segment) for context,
    # then the next 64+ characters; its tail is held back with it, so it never streams.
    assert asked[1] == LONG[2][-16:] + "".join(LONG[3:])
    rec = record(tmp_path, client_id="ms-1")
    assert [a.outcome for a in rec.attempts] == ["guard", "guard", "blocked"]
    assert [(v["verdict"], v["labels"]) for v in rec.guards or []] == [("block", ["S1"])]


def test_a_safe_stream_reaches_the_client_whole_after_each_segment_is_passed(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_model(segment=64))
    fs["ext"].text = lambda: LONG[:3]  # type: ignore[method-assign]
    _says_unsafe_about(fs["cls"], "forbidden")
    got, error = _streamed(gw, "ms-2")
    assert error is None and got == "".join(LONG[:3])
    rec = record(tmp_path, client_id="ms-2")
    # One segment complete at 64+ characters... and the text's end, checked before release.
    assert [a.outcome for a in rec.attempts] == ["guard", "ok"]
    assert [v["verdict"] for v in rec.guards or []] == ["pass"]


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
def test_a_slow_classifier_on_a_stream_fails_open_or_closed(
        setup: Any, tmp_path: Any, on_error: str) -> None:
    gw, fs = setup(_model(on_error, segment=4096, timeout=0.3))
    fs["cls"].delay_next(5, seconds=2.0)
    got, error = _streamed(gw, f"ms-{on_error}")
    rec = record(tmp_path, client_id=f"ms-{on_error}")
    [guard] = [a for a in rec.attempts if a.outcome == "guard"]
    assert (guard.error or "").startswith("timeout")
    assert [v["verdict"] for v in rec.guards or []] == [on_error]
    if on_error == "fail_open":
        assert error is None and got == "".join(fs["ext"].text())
        assert rec.attempts[-1].outcome == "ok"
    else:
        # Nothing unchecked reached the client.
        assert error is not None and got == ""
        assert "gave no verdict" in str(error)
        assert rec.attempts[-1].outcome == "blocked"
    # A whole reply the same way: served, or refused with 400.
    client = _client(gw, f"mr-{on_error}")
    if on_error == "fail_open":
        assert client.chat.completions.create(model="ext-chat", messages=HI).choices
    else:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="ext-chat", messages=HI)
    rec = record(tmp_path, client_id=f"mr-{on_error}")
    assert [v["verdict"] for v in rec.guards or []] == [on_error]
    assert [a.outcome for a in rec.attempts] == ["guard", "ok"]


def test_output_guards_never_see_streams_they_do_not_apply_to(
        setup: Any, tmp_path: Any) -> None:
    guards = {"judge": {**_model()["judge"], "applies_to": {"external_only": True}}}
    gw, fs = setup(guards)
    reply = _client(gw, "ms-own").chat.completions.create(model="gpu-chat", messages=HI,
                                                          stream=True)
    assert "".join((c.choices[0].delta.content or "") for c in reply if c.choices)
    assert fs["cls"].bodies() == []
    assert record(tmp_path, client_id="ms-own").guards is None
    assert json.dumps(fs["gpu"].bodies())


def test_an_anthropic_stream_is_cut_at_the_cap_and_its_sdk_raises(setup: Any) -> None:
    import anthropic

    gw, fs = setup(_length(max_chars=12))
    fs["ext"].text = lambda: ["Hello ", "there, ", "world ", "and more."]  # type: ignore
    client = anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0)
    got = ""
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="ext-chat", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            for t in stream.text_stream:
                got += t
    assert got == "Hello there," and "'cap' guard" in str(e.value)


def test_a_responses_stream_is_classified_by_segment(setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_model(segment=64))
    fs["ext"].text = lambda: LONG  # type: ignore[method-assign]
    _says_unsafe_about(fs["cls"], "forbidden")
    deltas = ""
    with pytest.raises(openai.APIError):
        for event in _client(gw, "ms-resp").responses.create(model="ext-chat", input="hi",
                                                              stream=True):
            if event.type == "response.output_text.delta":
                deltas += event.delta
    assert deltas == "".join(LONG[:3])
    rec = record(tmp_path, client_id="ms-resp")
    assert [v["verdict"] for v in rec.guards or []] == ["block"]
