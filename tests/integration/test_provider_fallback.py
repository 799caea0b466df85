"""Cross-provider fallback: an OpenAI-compatible deployment fails with 503 and the model falls
back to Anthropic; the client still gets a correct OpenAI-shaped answer, streamed and not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy


@pytest.fixture
def env(tmp_path: Any) -> Iterator[tuple[Gateway, FakeOpenAI, FakeAnthropic, FakeGemini]]:
    oa, ant, gem = FakeOpenAI("oa"), FakeAnthropic(words=3), FakeGemini(words=2)
    policy = simple_policy(tmp_path, {
        "oa": {"kind": "openai-compatible", "base_url": oa.url + "/v1"},
        "ant": {"kind": "anthropic", "base_url": ant.url, "api_key": ant.api_key},
        "gem": {"kind": "gemini", "base_url": gem.url + "/v1beta", "api_key": gem.api_key},
    }, {
        "smart": {"deployments": [{"provider": "oa", "model": "gpt-x"}],
                  "fallbacks": ["claude", "gemini"]},
        "claude": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5"}]},
        "gemini": {"deployments": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
    }, router={"max_attempts": 5})
    with oa, ant, gem, Gateway(policy, tmp=tmp_path) as g:
        yield g, oa, ant, gem


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


MESSAGES: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_non_streamed_503_falls_back_to_anthropic(env: Any) -> None:
    gw, oa, ant, _ = env
    oa.fail_next(1, 503)
    r = client(gw).chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)
    completion = r.parse()
    assert r.headers["x-gateway-deployment"] == "ant/claude-sonnet-4-5"
    assert completion.object == "chat.completion" and completion.model == "smart"
    assert completion.choices[0].message.content == "Hello0 word1 word2"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    assert len(oa.requests) == 1
    assert ant.requests[-1].body["system"] == "Be brief."


def test_streamed_503_falls_back_to_anthropic(env: Any) -> None:
    gw, oa, ant, _ = env
    oa.fail_next(1, 503)
    chunks = list(client(gw).chat.completions.create(
        model="smart", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.model == "smart" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello0 word1 word2"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert ant.requests[-1].body["stream"] is True


def test_both_fail_then_gemini_serves(env: Any) -> None:
    gw, oa, ant, gem = env
    oa.fail_next(1, 503)
    ant.fail_next(1, 529)
    with client(gw).chat.completions.stream(model="smart", messages=MESSAGES) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "Hello0 word1" and final.model == "smart"
    assert len(gem.requests) == 1
