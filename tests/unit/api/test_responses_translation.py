"""The Responses ingress's translation: requests → chat (golden fixtures, refusals), the edge's
body checks, and chat replies → Response objects the official SDK accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response

from gateway.api.bodies import check_responses
from gateway.api.responses_codec import CODEC
from gateway.api.responses_request import input_items, to_chat_request, untranslatable
from gateway.errors import InvalidRequest, RateLimited, error_json
from tests.unit.api.responses_fixtures import (
    RESPONSE_ID,
    check,
    load,
    read,
    responses_call,
    sdk_client,
)

REQUESTS = ["text", "multiturn", "images", "tools", "tool_roundtrip", "json_schema", "reasoning"]


@pytest.mark.parametrize("case", REQUESTS)
def test_request_golden(case: str) -> None:
    fixture = load(f"request_{case}.json")
    body = fixture["body"]
    check_responses(body)  # every fixture is a body the edge accepts
    assert untranslatable(body) is None
    check(f"request_{case}.expected.json", to_chat_request(body, fixture["history"]))


def test_string_input_becomes_one_user_message() -> None:
    assert input_items({"input": "hi"}) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    assert input_items({}) == []


def test_input_items_type_messages_and_keep_the_rest_as_sent() -> None:
    fc = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    parts = [{"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]
    assert input_items({"input": [{"role": "user", "content": parts}, fc]}) == [
        {"type": "message", "role": "user", "content": parts}, fc]


def test_developer_messages_reach_chat_backends_as_system() -> None:
    out = to_chat_request({"model": "m", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        {"role": "user", "content": "hi"}]}, [])
    assert out["messages"] == [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "hi"}]


def test_allowed_tools_offers_only_those_tools() -> None:
    tools: list[dict[str, Any]] = [{"type": "function", "name": n, "parameters": {}}
                                   for n in ("a", "b", "c")]
    out = to_chat_request({"model": "m", "input": "x", "tools": tools, "tool_choice": {
        "type": "allowed_tools", "mode": "required",
        "tools": [{"type": "function", "name": "b"}]}}, [])
    assert [t["function"]["name"] for t in out["tools"]] == ["b"]
    assert out["tool_choice"] == "required"


def test_parallel_tool_calls_is_sent_only_with_tools() -> None:
    # OpenAI's chat API refuses parallel_tool_calls on a request without tools.
    out = to_chat_request({"model": "m", "input": "x", "parallel_tool_calls": True}, [])
    assert "parallel_tool_calls" not in out and "tools" not in out


def test_history_leaves_out_what_chat_cannot_carry() -> None:
    history: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "see"},
            {"type": "input_image", "file_id": "file-1", "detail": "auto"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
    ]
    out = to_chat_request({"model": "m", "input": "next"}, history)
    assert out["messages"] == [{"role": "user", "content": "see"},
                               {"role": "assistant", "content": "ok"},
                               {"role": "user", "content": "next"}]


@pytest.mark.parametrize(("body", "param", "what"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "built-in tool 'web_search'"),
    ({"tools": [{"type": "function", "name": "f"}, {"type": "file_search",
                                                     "vector_store_ids": ["v"]}]},
     "tools[1].type", "'file_search'"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type", "'mcp'"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "web_search_preview"),
    ({"background": True}, "background", "background response"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "prompt template"),
    ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "item_reference"),
    ({"input": [{"id": "msg_1"}]}, "input[0]", "item reference"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id", "file id"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_file", "file_url": "https://x/a.pdf"}]}]},
     "input[0].content[0]", "file_data"),
    ({"input": [{"role": "system", "content": [{"type": "input_image",
                                                 "image_url": "https://x/a.png"}]}]},
     "input[0].content[0].type", "system message"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id",
     "call_id"),
])
def test_untranslatable_names_the_field(body: dict[str, Any], param: str, what: str) -> None:
    body = {"model": "claude-public", "input": "x", **body}
    reason = untranslatable(body)
    assert reason is not None and reason.startswith(param + ":") and what in reason
    assert "'claude-public'" in reason and "translation to chat completions" in reason
    with pytest.raises(InvalidRequest) as e:
        to_chat_request(body, [])
    assert e.value.param == param and e.value.status == 400


def test_plain_requests_are_translatable() -> None:
    assert untranslatable({"model": "m", "input": "x", "background": False, "prompt": None,
                           "tools": [{"type": "function", "name": "f"}],
                           "tool_choice": {"type": "function", "name": "f"}}) is None


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
     "input[0].content[0].image_url"),
    ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function"}},
     "tool_choice.name"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id"),
    ({"input": []}, "input"),
])
def test_bad_input_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        to_chat_request({"model": "m", "input": "x", **body}, [])
    assert e.value.param == param and e.value.status == 400


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"input": "x"}, "model", "You must provide a model parameter"),
    ({"model": "m", "input": 5}, "input", "valid string"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
     "input[0].content[0].text", "valid string"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "'user'"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
     "input[0].arguments", "Missing required parameter"),
    ({"model": "m", "tools": [{"type": "function", "parameters": {}}]}, "tools[0].name",
     "Missing required parameter"),
    ({"model": "m", "max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
    ({"model": "m", "stream": "yes"}, "stream", "valid boolean"),
    ({"model": "m", "metadata": {"k": "v" * 513}}, "metadata.k", "at most 512"),
    ({"model": "m", "text": {"format": {"type": "json_schema", "schema": []}}},
     "text.format.schema", "JSON object"),
])
def test_edge_check_in_openai_words(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        check_responses(body)
    assert e.value.param == param and message in e.value.message


def test_edge_check_leaves_built_in_tools_and_items_to_native_backends() -> None:
    # Their shapes are OpenAI's to check; the gateway reads only what it translates.
    check_responses({"model": "m", "tools": [{"type": "web_search", "filters": {"x": 1}}],
                     "input": [{"type": "computer_call_output", "output": {"type": "x"}},
                               {"type": "item_reference", "id": "msg_1"}]})


# ---- replies ----------------------------------------------------------------------------------


NATIVE = {"model": "llama-public", "input": "x", "instructions": "Be brief.",
          "tools": [{"type": "function", "name": "get_weather", "parameters": {
              "type": "object", "properties": {"city": {"type": "string"}}}, "strict": True},
              {"type": "function", "name": "now", "parameters": {"type": "object"}}],
          "tool_choice": "auto", "temperature": 0.2, "max_output_tokens": 64,
          "metadata": {"ticket": "T-1"}, "user": "u-42", "previous_response_id": "resp_prev",
          "reasoning": {"effort": "low"}}


@pytest.mark.parametrize("case", ["text", "tool_calls", "length"])
def test_reply_golden(case: str) -> None:
    call = responses_call(NATIVE)
    out = json.loads(CODEC.reply(read(f"reply_{case}.chat.json"), call))
    Response.model_validate(out)  # the SDK's own model accepts it
    assert out["id"] == RESPONSE_ID and out["model"] == "llama-public"
    assert call.final_response == out  # what is stored is exactly what the client got
    check(f"reply_{case}.expected.json", out)


def test_reply_usage_maps_cached_and_reasoning_tokens() -> None:
    out = json.loads(CODEC.reply(read("reply_text.chat.json"), responses_call(NATIVE)))
    assert out["usage"] == {"input_tokens": 1200, "output_tokens": 150, "total_tokens": 1350,
                            "input_tokens_details": {"cached_tokens": 1024,
                                                     "cache_write_tokens": 0},
                            "output_tokens_details": {"reasoning_tokens": 120}}


def test_reply_through_the_sdk_gives_output_text_and_tool_calls() -> None:
    body = CODEC.reply(read("reply_tool_calls.chat.json"), responses_call(NATIVE))
    r = sdk_client(body, stream=False).responses.create(model="llama-public", input="x")
    assert r.output_text == "Checking now."
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_abc", "get_weather", '{"city": "Paris"}'), ("call_def", "now", "{}")]
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 100


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None),
    ("length", "incomplete", "max_output_tokens"),
    ("content_filter", "incomplete", "content_filter"),
])
def test_reply_status(finish: str, status: str, reason: str | None) -> None:
    body = {"id": "c", "created": 1, "choices": [{"index": 0, "finish_reason": finish,
                                                   "message": {"role": "assistant",
                                                               "content": "x"}}]}
    out = json.loads(CODEC.reply(json.dumps(body).encode(), responses_call()))
    assert out["status"] == status
    assert out["incomplete_details"] == ({"reason": reason} if reason else None)
    assert out["output"][0]["status"] == ("completed" if status == "completed" else "incomplete")
    Response.model_validate(out)


def test_reply_refusal_and_empty_reply() -> None:
    refused = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}}]}
    out = json.loads(CODEC.reply(json.dumps(refused).encode(), responses_call()))
    assert out["output"][0]["content"] == [{"type": "refusal",
                                            "refusal": "I can't help with that."}]
    empty = {"choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": ""}}]}
    out = json.loads(CODEC.reply(json.dumps(empty).encode(), responses_call()))
    assert Response.model_validate(out).output_text == ""
    assert out["usage"] is None  # the backend reported none; the ledger estimates it


def test_reply_defaults_echo_like_openai() -> None:
    out = json.loads(CODEC.reply(read("reply_length.chat.json"),
                                 responses_call({"model": "m", "input": "x"})))
    assert (out["tool_choice"], out["tools"], out["store"], out["parallel_tool_calls"]) == (
        "auto", [], True, True)
    assert out["text"] == {"format": {"type": "text"}} and out["metadata"] == {}


def test_a_native_response_passes_through() -> None:
    body = json.dumps({"id": "resp_up", "object": "response", "output": []}).encode()
    assert CODEC.reply(body, responses_call()) == body


def test_error_body_is_openai_error_json() -> None:
    exc = RateLimited("slow down", param=None)
    assert CODEC.error_body(exc) == error_json(exc)
