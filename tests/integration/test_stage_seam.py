"""The request-stage seam (gateway/stages/base.py) through the real gateway, with a test stage
plugged into the registry: a block before routing is a 400 `content_policy_violation` in the
ingress's shape with its one ledger record and its reservation released; a block per attempt
keeps the request from the upstream; a reply block bills what was generated; a watcher that
blocks mid-stream ends the stream with `finish_reason: content_filter` and an error event the
SDKs raise on; a watcher that rewrites chunks changes what the client reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.policy.models import Policy
from gateway.providers.base import Target
from gateway.stages import registry
from gateway.stages.base import Blocked, ReplyInfo, StageContext, StageRun, StreamWatch
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy
from tests.integration.ledger_records import record
from tests.integration.tenancy_support import policy_key


class _Watch:
    """Blocks a stream once `word2` has streamed; rewrites `word1` to `WORD1`."""

    def __init__(self) -> None:
        self.finished = False

    async def feed(self, chunk: bytes) -> bytes:
        passed = b""
        for event in chunk.split(b"\n\n"):
            if not event:
                continue
            if b"word2" in event:  # the events in front of it still go out
                raise Blocked("test-stage", "The reply was blocked by the gateway's "
                              "'test-stage' policy check.", release=passed)
            passed += event.replace(b"word1", b"WORD1") + b"\n\n"
        return passed

    async def finish(self) -> None:
        self.finished = True


class _Run(StageRun):
    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.text = str(ctx.call.body.get("messages"))

    async def before(self) -> None:
        if "forbidden" in self.text:
            raise Blocked("test-stage")

    async def attempt(self, target: Target) -> None:
        if "not-to-oa" in self.text and target.provider_name == "oa":
            raise Blocked("test-stage", "This request may not go to an external provider.")

    async def reply(self, body: bytes, info: ReplyInfo) -> bytes:
        if "cut-reply" in self.text:
            raise Blocked("test-stage")
        return body.replace(b"word1", b"WORD1")

    def stream(self, info: ReplyInfo) -> StreamWatch | None:
        return _Watch() if "cut-stream" in self.text or "rewrite" in self.text else None


class _Stage:
    name = "test-stage"
    order = 100

    def begin(self, ctx: StageContext) -> StageRun | None:
        return _Run(ctx)


def _build(policy: Policy, runtime: Any) -> Iterable[_Stage]:
    return (_Stage(),)


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, FakeOpenAI,
                                                                          str]]:
    monkeypatch.setattr(registry, "_BUILDERS", [*registry._BUILDERS, _build])
    key = policy_key("k1")
    fake = FakeOpenAI("oa", words=5).start()
    policy = simple_policy(
        tmp_path, {"oa": {"kind": "openai-compatible", "base_url": fake.url + "/v1"}},
        {"m": {"deployments": [{"provider": "oa", "model": "up-m"}]}},
        # One request at a time: a reservation a block failed to release refuses the next.
        tenants={"t": {"keys": [key.entry()], "limits": {"concurrency": 1}}})
    with Gateway(policy, tmp=tmp_path) as g:
        yield g, fake, key.key
    fake.stop()


def _say(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_block_before_routing(gw: tuple[Gateway, FakeOpenAI, str]) -> None:
    g, fake, key = gw
    client = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
    for i in range(3):  # concurrency 1: each block released its reservation
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="m", messages=_say("a forbidden thing"),
                                           extra_headers={"x-request-id": f"b{i}"})
        assert e.value.code == "content_policy_violation"
        assert "test-stage" in str(e.value.message) and "forbidden" not in str(e.value.message)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=_say("not-to-oa please"))
    assert fake.bodies("/chat/completions") == []
    rec = record(g.tmp, client_id="b0")
    assert (rec.status, rec.error_code, rec.attempts) == (400, "content_policy_violation", [])
    ant = anthropic.Anthropic(base_url=g.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as ae:
        ant.messages.create(model="m", max_tokens=20, messages=_say("forbidden"))
    assert ae.value.body["type"] == "error"  # type: ignore[index]
    # The seam stands aside for a clean prompt, and its reply hook rewrites it.
    ok = client.chat.completions.create(model="m", messages=_say("hello"))
    assert ok.choices[0].message.content == "Hello0 WORD1 word2 word3 word4"


def test_block_of_a_reply_bills_it(gw: tuple[Gateway, FakeOpenAI, str]) -> None:
    g, _fake, key = gw
    client = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=_say("cut-reply"),
                                       extra_headers={"x-request-id": "r1"})
    assert e.value.code == "content_policy_violation"
    rec = record(g.tmp, client_id="r1")
    assert rec.status == 400
    [a] = rec.attempts
    assert a.outcome == "ok" and a.usage is not None and a.usage.output == 5


def test_watcher_blocks_a_stream_and_rewrites_one(gw: tuple[Gateway, FakeOpenAI, str]) -> None:
    g, fake, key = gw
    client = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(
                model="m", messages=_say("cut-stream"), stream=True,
                extra_headers={"x-request-id": "s1"}):
            seen.append(chunk)
    assert "test-stage" in str(e.value.message)
    text = "".join(c.choices[0].delta.content or "" for c in seen if c.choices)
    assert text == "Hello0 WORD1"  # what streamed before the block, rewritten
    assert [c.choices[0].finish_reason for c in seen if c.choices][-1] == "content_filter"
    rec = record(g.tmp, client_id="s1")
    [a] = rec.attempts
    assert (a.outcome, rec.error_code) == ("blocked", "content_policy_violation")
    assert a.usage is not None and a.usage.output > 0  # what streamed is billed
    ant = anthropic.Anthropic(base_url=g.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError):
        with ant.messages.stream(model="m", max_tokens=20, messages=_say("cut-stream")) as s:
            for _ in s.text_stream:
                pass
    fake.words = 2  # "Hello0 word1": nothing to block, one word to rewrite
    done = list(client.chat.completions.create(model="m", messages=_say("rewrite"),
                                               stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in done if c.choices) == \
        "Hello0 WORD1"
    assert [c.choices[0].finish_reason for c in done if c.choices][-1] == "stop"
