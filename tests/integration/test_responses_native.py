"""`/v1/responses` passed through natively — OpenAI, Azure (v1 and dated api-versions) and a
vLLM server declared to serve it — with the official SDK: gateway ids and public model names in
every event, fallback when a stream fails before any output, how a stream that fails after it
ends, and a conversation moving from a translated backend to a native one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.azure_fake import FakeAzure
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy


@pytest.fixture
def env(fakes: Callable[..., FakeOpenAI], gateway: Any,
        tmp_path: Path) -> Iterator[tuple[Gateway, FakeOpenAI, FakeOpenAI, FakeOpenAI,
                                          FakeOpenAI, FakeAzure]]:
    oa = fakes("oa", cached_tokens=2)
    chat = fakes("chat-only")
    vllm = fakes("vllm-resp", vllm=True)
    plain = fakes("vllm-plain", vllm=True)
    az = FakeAzure(deployments={"gpt5-prod": "gpt-5-2025-08-07"})
    az.start()
    gw = gateway(simple_policy(
        tmp_path,
        {"oa": provider(oa, kind="openai", api_key="sk-oa"),
         "chat": provider(chat),
         "vllm": provider(vllm, kind="vllm", supports_responses=True),
         "plain": provider(plain, kind="vllm"),
         "az": {"kind": "azure", "base_url": az.url, "api_key": az.api_key,
                "api_version": "v1"},
         "az-dated": {"kind": "azure", "base_url": az.url, "api_key": az.api_key,
                      "api_version": "2025-04-01-preview"}},
        {"gpt": {"deployments": [{"provider": "oa", "model": "gpt-4o-mini"}],
                 "fallbacks": ["chat"]},
         "chat": {"deployments": [{"provider": "chat", "model": "llama"}]},
         "vllm": {"deployments": [{"provider": "vllm", "model": "qwen"}]},
         "plain": {"deployments": [{"provider": "plain", "model": "qwen"}]},
         "azure": {"deployments": [{"provider": "az", "model": "gpt5-prod"}]},
         "azure-dated": {"deployments": [{"provider": "az-dated", "model": "gpt5-prod"}]}},
        router={"circuit_breaker": {"failures": 100}}))
    yield gw, oa, chat, vllm, plain, az
    az.stop()


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0, timeout=20)


@pytest.mark.parametrize(("model", "path"), [
    ("gpt", "/v1/responses"), ("vllm", "/v1/responses"), ("azure", "/openai/v1/responses"),
    ("azure-dated", "/openai/responses")])
def test_native_backends_get_the_responses_api(env: Any, model: str, path: str) -> None:
    gw, oa, _chat, vllm, _plain, az = env
    fake = {"gpt": oa, "vllm": vllm}.get(model, az)
    c = client(gw)
    r = c.responses.create(model=model, input="Hi")
    assert fake.requests[-1].path == path
    assert r.model == model and r.id.startswith("resp_") and r.output_text.startswith("Hello0")
    upstream_id = next(iter(fake.responses_api.stored))
    assert r.id != upstream_id and upstream_id not in r.model_dump_json()
    with c.responses.stream(model=model, input="Hi") as s:
        events = list(s)
        final = s.get_final_response()
    # The SDK checks the response's id is one across lifecycle events; all are the gateway's.
    lifecycle = [e.response for e in events if hasattr(e, "response")]
    assert {x.id for x in lifecycle} == {final.id} and {x.model for x in lifecycle} == {model}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert c.responses.retrieve(final.id).output_text == final.output_text


def test_undeclared_vllm_is_reached_by_translation(env: Any) -> None:
    gw, *_, plain, _az = env
    r = client(gw).responses.create(model="plain", input="Hi")
    assert r.output_text and [q.path for q in plain.requests] == ["/v1/chat/completions"]


@pytest.mark.parametrize("fault", ["error", "response.failed", "drop"])
def test_a_native_stream_failing_before_output_falls_back(env: Any, fault: str) -> None:
    gw, oa, chat, *_ = env
    if fault == "drop":
        oa.drop_stream_after(2)  # after response.created and response.in_progress
    else:
        oa.error_event_after(2, None if fault == "error" else "response.failed")
    with client(gw).responses.stream(model="gpt", input="Hi") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "error" not in kinds and final.output_text
    assert chat.bodies("/chat/completions"), "the fallback served it"


def test_a_native_stream_failing_after_output_ends_numbered_on(env: Any) -> None:
    gw, oa, *_ = env
    oa.error_event_after(6)  # after two text deltas
    oa.chunk_delay = 0.02  # the deltas reach the client before the error does
    with client(gw).responses.stream(model="gpt", input="Hi") as s:
        events = list(s)
    assert [e.type for e in events][-2:] == ["response.failed", "error"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-2]
    assert failed.response.status == "failed" and failed.response.model == "gpt"
    assert events[-1].code == "upstream_stream_error"


def test_a_conversation_moves_from_translated_to_native(env: Any) -> None:
    gw, oa, *_ = env
    c = client(gw)
    first = c.responses.create(model="chat", input="My name is Ada.")
    second = c.responses.create(model="gpt", input="What is my name?",
                                previous_response_id=first.id)
    sent = oa.bodies("/responses")[-1]
    # The native upstream never saw the first turn: it gets it as items, not an id.
    assert "previous_response_id" not in sent
    assert [i.get("role") for i in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][-1]["content"] == "What is my name?"
    assert second.previous_response_id == first.id
    # And on from the native turn: the upstream's own id this time.
    c.responses.create(model="gpt", input="Again?", previous_response_id=second.id)
    sent = oa.bodies("/responses")[-1]
    assert sent["previous_response_id"] in oa.responses_api.stored
    assert sent["input"] == "Again?"
