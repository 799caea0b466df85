"""One suite over every provider wire format: the same client-visible behaviour through the
gateway whatever the upstream speaks — answers, streams with usage, fallback on a retryable
failure or a hung upstream, a mid-stream drop reported as an error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.azure_fake import FakeAzure
from tests.fakes.base import FakeServer
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy

HELLO = "Hello0 word1 word2 word3 word4"
FAST = {"connect": 2.0, "first_byte": 0.5, "total": 30.0}


def _openai(f: Any) -> tuple[dict[str, Any], str]:
    return {"kind": "openai-compatible", "base_url": f.url + "/v1"}, "up-model"


def _anthropic(f: Any) -> tuple[dict[str, Any], str]:
    return {"kind": "anthropic", "base_url": f.url, "api_key": f.api_key}, "claude-x"


def _gemini(f: Any) -> tuple[dict[str, Any], str]:
    return {"kind": "gemini", "base_url": f.url + "/v1beta", "api_key": f.api_key}, "gemini-x"


def _azure(f: Any) -> tuple[dict[str, Any], str]:
    return {"kind": "azure", "base_url": f.url, "api_key": f.api_key}, "gpt4o-prod"


# kind → (fake, provider config, the upstream event after which a drop is mid-stream)
KINDS: dict[str, tuple[type[FakeServer], Any, int]] = {
    "openai": (FakeOpenAI, _openai, 3),
    "anthropic": (FakeAnthropic, _anthropic, 5),
    "gemini": (FakeGemini, _gemini, 3),
    "azure": (FakeAzure, _azure, 4),
}


@pytest.fixture(params=sorted(KINDS))
def env(request: Any, tmp_path: Any) -> Iterator[tuple[Gateway, Any, int]]:
    cls, config, mid = KINDS[request.param]
    up, backup = cls(), FakeOpenAI("backup", words=2)
    provider, model = config(up)
    policy = simple_policy(tmp_path, {
        "up": {**provider, "timeouts": FAST},
        "backup": {"kind": "openai-compatible", "base_url": backup.url + "/v1"},
    }, {
        "m": {"deployments": [{"provider": "up", "model": model}], "fallbacks": ["backup"]},
        "solo": {"deployments": [{"provider": "up", "model": model}]},
        "backup": {"deployments": [{"provider": "backup", "model": "b"}]},
    })
    with up, backup, Gateway(policy, tmp=tmp_path) as g:
        yield g, up, mid


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def test_answer_and_stream_with_usage(env: Any) -> None:
    gw, _, _ = env
    r = client(gw).chat.completions.create(model="solo",
                                           messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content == HELLO and r.model == "solo"
    assert r.usage is not None and r.usage.prompt_tokens == 11
    chunks = list(client(gw).chat.completions.create(
        model="solo", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_retryable_failure_falls_back(env: Any, stream: bool) -> None:
    gw, up, _ = env
    up.fail_next(1, 503)
    r = client(gw).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], stream=stream)
    assert r.headers["x-gateway-deployment"] == "backup/b"


def test_hung_upstream_falls_back(env: Any) -> None:
    gw, up, _ = env
    up.hang_next(1)
    r = client(gw).chat.completions.create(model="m",
                                           messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content == "Hello0 word1"


def test_drop_mid_stream_is_an_error_not_a_short_answer(env: Any) -> None:
    gw, up, mid = env
    up.drop_stream_after(mid)
    got = []
    with pytest.raises(openai.APIError):
        for c in client(gw).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], stream=True):
            got.append(c.choices[0].delta.content or "" if c.choices else "")
    assert "".join(got).startswith("Hello0") and "".join(got) != HELLO
