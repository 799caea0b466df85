"""The cost flow control counts per request: the new turn's tokens plus its output, so a
multi-turn chat re-sending its history is not charged for it again."""

from __future__ import annotations

from gateway.flow.cost import request_cost, reread_tokens


def test_a_chat_turn_costs_its_new_messages_and_its_max_tokens() -> None:
    body = {"messages": [
        {"role": "system", "content": "s" * 8000},  # shared system prompt: cached
        {"role": "user", "content": "u" * 4000},
        {"role": "assistant", "content": "a" * 4000},  # the history ends at the last reply
        {"role": "user", "content": "q" * 400},
        {"role": "tool", "content": "t" * 400},
    ], "max_tokens": 50}
    assert request_cost(body, 256) == 100 + 100 + 50


def test_a_first_turn_leaves_the_system_prompt_out_and_defaults_its_output() -> None:
    body = {"messages": [{"role": "system", "content": "s" * 8000},
                         {"role": "user", "content": [{"type": "text", "text": "x" * 2000}]}]}
    assert 500 <= request_cost(body, 256) - 256 <= 505  # the text part's ~500 tokens
    assert request_cost({**body, "max_completion_tokens": 10}, 256) < request_cost(body, 256)


def test_a_body_without_messages_counts_its_whole_prompt_and_is_never_free() -> None:
    assert request_cost({"prompt": "p" * 4000, "max_tokens": 1}, 256) > 1000
    assert request_cost({"messages": []}, 1) == 1.0
    assert request_cost({"messages": [{"role": "assistant", "content": "x"}],
                         "max_tokens": 0}, 5) == 5.0


def test_the_history_a_request_re_sends_is_every_message_up_to_its_last_reply() -> None:
    body = {"messages": [
        {"role": "system", "content": "s" * 8000},  # not history: the shared prompt
        {"role": "user", "content": "u" * 4000},
        {"role": "assistant", "content": "a" * 4000},
        {"role": "user", "content": "q" * 400},  # the new turn: not re-sent
    ]}
    assert reread_tokens(body) == 2000
    assert reread_tokens({"messages": body["messages"][:2]}) == 0  # a first turn
    assert reread_tokens({"prompt": "p" * 400}) == 0
