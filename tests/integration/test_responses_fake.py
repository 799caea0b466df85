"""The fakes' Responses API read by the official `openai` SDK directly (no gateway): what the
gateway's tests build on must be OpenAI's wire format as the SDK understands it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.azure_fake import FakeAzure
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.responses_wire import FUNCTION_ARGUMENTS

TOOLS: Any = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI("resp-fake", cached_tokens=3, reasoning_tokens=2)
    f.start()
    try:
        yield f
    finally:
        f.stop()


def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def test_create_is_a_response_with_text_and_usage_details(fake: FakeOpenAI) -> None:
    r = client(fake).responses.create(model="gpt-5-mini", input="Hi", instructions="Be brief.",
                                      reasoning={"effort": "low"}, metadata={"k": "v"})
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == "Hello0 word1 word2 word3 word4"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens) == (11, 3)
    assert (r.usage.output_tokens, r.usage.output_tokens_details.reasoning_tokens) == (7, 2)
    assert r.instructions == "Be brief." and r.metadata == {"k": "v"}
    assert fake.bodies("/responses")[-1]["input"] == "Hi"


def test_stream_events_come_in_order_and_the_helper_accumulates_them(fake: FakeOpenAI) -> None:
    with client(fake).responses.stream(model="gpt-5-mini", input="Hi") as s:
        events = list(s)
        final = s.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert kinds.count("response.output_text.delta") == 5
    assert final.output_text == "Hello0 word1 word2 word3 word4"
    assert final.usage is not None and final.usage.total_tokens == 16


@pytest.mark.parametrize("streamed", [False, True])
def test_function_call_when_the_input_asks_for_a_tool(fake: FakeOpenAI, streamed: bool) -> None:
    kw: Any = {"model": "m", "input": "Please call get_weather for Paris", "tools": TOOLS}
    if streamed:
        with client(fake).responses.stream(**kw) as s:
            kinds = [e.type for e in s]
            r = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
    else:
        r = client(fake).responses.create(**kw)
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == FUNCTION_ARGUMENTS and call.call_id.startswith("call_")


def test_previous_response_id_is_stored_and_an_unknown_one_is_a_400(fake: FakeOpenAI) -> None:
    c = client(fake)
    first = c.responses.create(model="m", input="My name is Ada.")
    second = c.responses.create(model="m", input="And my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert fake.responses_api.stored[first.id]["input"][0]["content"] == "My name is Ada."
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="m", input="x", previous_response_id="resp_unknown")
    assert e.value.code == "previous_response_not_found"
    assert e.value.param == "previous_response_id"


def test_store_false_stores_nothing(fake: FakeOpenAI) -> None:
    c = client(fake)
    r = c.responses.create(model="m", input="secret", store=False)
    assert r.id not in fake.responses_api.stored
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="m", input="x", previous_response_id=r.id)


def test_max_output_tokens_makes_it_incomplete(fake: FakeOpenAI) -> None:
    with client(fake).responses.stream(model="m", input="Hi", max_output_tokens=3) as s:
        kinds = [e.type for e in s]
    assert kinds[-1] == "response.incomplete"
    r = client(fake).responses.create(model="m", input="Hi", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "Hello0 word1 word2"


def test_faults_reach_the_sdk(fake: FakeOpenAI) -> None:
    c = client(fake)
    fake.fail_next(1, status=503)
    with pytest.raises(openai.InternalServerError):
        c.responses.create(model="m", input="Hi")
    fake.error_event_after(3)
    with c.responses.stream(model="m", input="Hi") as s:
        last = list(s)[-1]
    assert last.type == "error" and last.sequence_number == 3
    fake.error_event_after(4, "response.failed")
    with c.responses.stream(model="m", input="Hi") as s:
        last = list(s)[-1]
    assert last.type == "response.failed" and last.sequence_number == 4


def test_azure_serves_responses_on_v1_and_on_a_dated_api_version() -> None:
    with FakeAzure(deployments={"gpt5-prod": "gpt-5-2025-08-07"}) as az:
        v1 = openai.OpenAI(base_url=az.url + "/openai/v1", max_retries=0,
                           api_key="unused", default_headers={"api-key": az.api_key})
        r = v1.responses.create(model="gpt5-prod", input="Hi")
        assert r.model == "gpt-5-2025-08-07" and r.output_text.startswith("Hello0")
        dated = openai.AzureOpenAI(azure_endpoint=az.url, api_key=az.api_key,
                                   api_version="2025-04-01-preview", max_retries=0)
        with dated.responses.stream(model="gpt5-prod", input="Hi") as s:
            assert s.get_final_response().output_text.startswith("Hello0")
        assert az.requests[-1].path == "/openai/responses"
        assert az.requests[-1].query == {"api-version": "2025-04-01-preview"}
        with pytest.raises(openai.NotFoundError):
            v1.responses.create(model="no-such-deployment", input="Hi")
