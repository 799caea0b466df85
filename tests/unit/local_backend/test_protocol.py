from __future__ import annotations

import pytest

from local_backend.errors import ContextLengthExceeded, InvalidRequest
from local_backend.protocol import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_body,
    resolve_max_tokens,
)


def test_max_tokens_defaults_to_what_the_prompt_leaves() -> None:
    assert resolve_max_tokens(None, 100, 2048) == 1948
    assert resolve_max_tokens(10, 100, 2048) == 10


@pytest.mark.parametrize(("requested", "prompt"), [(None, 2048), (100, 1990), (1, 3000)])
def test_too_long_is_a_context_length_error_in_vllm_words(
    requested: int | None, prompt: int
) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        resolve_max_tokens(requested, prompt, 2048)
    err = caught.value
    assert err.status == 400 and err.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in err.message


def test_validation_error_names_the_field_and_the_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ChatRequest, b'{"model": "m", "messages": []}')
    assert caught.value.message.startswith("messages: List should have at least 1 item")
    assert caught.value.param == "messages"
    with pytest.raises(InvalidRequest, match=r"^temperature: .* \(got 5\)$"):
        parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user"}], '
                                b'"temperature": 5}')
    with pytest.raises(InvalidRequest, match="JSON"):
        parse_body(ChatRequest, b"{not json")


def test_sampling_params_follow_the_request_and_seed_each_choice() -> None:
    body = parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": '
                      b'"x"}], "max_completion_tokens": 7, "max_tokens": 99, "stop": "END", '
                      b'"seed": 10, "temperature": 0.5, "top_k": -1, "ignore_eos": true}')
    p0, p1 = body.sampling(5, 100, 0), body.sampling(5, 100, 1)
    assert (p0.max_tokens, p0.stop, p0.seed, p1.seed) == (7, ("END",), 10, 11)
    assert (p0.temperature, p0.top_k, p0.ignore_eos) == (0.5, 0, True)


def test_text_parts_are_joined_and_other_parts_refused() -> None:
    ok = parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": '
                    b'[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}')
    assert ok.template_messages() == [{"role": "user", "content": "a\nb"}]
    image = parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": '
                       b'[{"type": "image_url", "image_url": {"url": "x"}}]}]}')
    with pytest.raises(InvalidRequest, match="'image_url' is not supported"):
        image.template_messages()


@pytest.mark.parametrize("extra", [b'"tools": [{"type": "function"}]', b'"logprobs": true',
                                   b'"response_format": {"type": "json_object"}',
                                   b'"logit_bias": {"1": 5}'])
def test_features_we_cannot_honour_are_refused_not_ignored(extra: bytes) -> None:
    body = parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": '
                      b'"x"}], ' + extra + b"}")
    with pytest.raises(InvalidRequest, match="not supported"):
        body.check_supported()


def test_prompt_and_input_shapes() -> None:
    def prompts(raw: bytes) -> list[str | list[int]]:
        return parse_body(CompletionRequest, b'{"model": "m", "prompt": ' + raw + b"}").prompts()

    assert prompts(b'"hi"') == ["hi"]
    assert prompts(b'["a", "b"]') == ["a", "b"]
    assert prompts(b"[1, 2, 3]") == [[1, 2, 3]]
    assert prompts(b"[[1], [2, 3]]") == [[1], [2, 3]]

    def inputs(raw: bytes) -> list[str] | list[list[int]]:
        return parse_body(EmbeddingRequest, b'{"model": "m", "input": ' + raw + b"}").inputs()

    assert inputs(b'"hi"') == ["hi"]
    assert inputs(b"[101, 102]") == [[101, 102]]
    with pytest.raises(InvalidRequest, match="input must not be empty"):
        inputs(b"[]")
