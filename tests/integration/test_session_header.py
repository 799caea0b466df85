"""`session_key: {header: NAME}` through a real gateway: the header the policy names pins a
conversation to one of four fake vLLM endpoints, through each ingress (OpenAI chat, the
Responses API, Anthropic Messages) driven by the official SDKs; `x-session-id` does not."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.integration.conftest import provider, simple_policy

NAMES = ("a", "b", "c", "d")
HEADER = "X-Conversation-Id"


@pytest.fixture
def gw(fakes: Any, gateway: Any, tmp_path: Any) -> Any:
    fs = [fakes(n, vllm=True, words=1) for n in NAMES]
    return gateway(simple_policy(
        tmp_path, {f.name: provider(f, kind="vllm") for f in fs},
        {"chat": {"strategy": "prefix-affinity", "session_key": {"header": HEADER},
                  "deployments": [{"provider": f.name, "model": "m"} for f in fs]}}))


def _homes(gw: Any, conversation: str | None, n: int = 8) -> set[str]:
    """Where `n` distinct prompts of one conversation were served, per ingress."""
    headers = {"x-session-id": "ignored-by-this-model"}
    if conversation is not None:
        headers[HEADER] = conversation
    oa = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0,
                       default_headers=headers)
    an = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0,
                             default_headers=headers)
    homes: set[str] = set()
    for i in range(n):
        chat = oa.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"question {i} " * 20}])
        resp = oa.responses.with_raw_response.create(model="chat", input=f"turn {i} " * 20)
        msg = an.messages.with_raw_response.create(
            model="chat", max_tokens=5, messages=[{"role": "user", "content": f"q {i} " * 20}])
        homes |= {r.headers["x-gateway-deployment"] for r in (chat, resp, msg)}
    return homes


def test_the_named_header_pins_a_conversation_through_every_ingress(gw: Any) -> None:
    assert len(_homes(gw, "thread-42")) == 1
    # Without it (x-session-id is not this model's key) the prompts spread over the pool.
    assert len(_homes(gw, None)) > 1
