"""Request bodies of the OpenAI API as pydantic models, and their sampling parameters.

Unknown fields are ignored (as OpenAI and vLLM do); fields that would change the output in a
way this server cannot honour (tools, logprobs, guided JSON) are refused with a 400 that says so,
rather than silently producing something else.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from local_backend.engine.sequence import SamplingParams
from local_backend.errors import ContextLengthExceeded, InvalidRequest, context_length_error


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False
    """Send a last chunk with `choices: []` and the request's usage."""
    continuous_usage_stats: bool = False
    """vLLM extension: usage so far on every chunk."""


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def for_template(self, index: int) -> dict[str, str]:
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.type != "text" or part.text is None:
                    raise InvalidRequest(
                        f"messages[{index}]: content part of type {part.type!r} is not supported "
                        "by this model; only text parts are.",
                        param=f"messages[{index}].content",
                    )
                texts.append(part.text)
            text = "\n".join(texts)  # vLLM joins text parts with newlines
        else:
            text = self.content or ""
        message = {"role": self.role, "content": text}
        if self.name:
            message["name"] = self.name
        return message


class _Sampling(_Body):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling(self, prompt_tokens: int, max_model_len: int, index: int = 0) -> SamplingParams:
        """Parameters for the ``index``-th sequence of this request (``n`` > 1 or many prompts).

        Sequences of one seeded request get seed, seed+1, … so they differ yet repeat.
        """
        max_tokens = resolve_max_tokens(self.requested_max_tokens(), prompt_tokens, max_model_len)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            seed=None if self.seed is None else self.seed + index,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def check_supported(self) -> None:
        if self.logit_bias:
            raise _unsupported("logit_bias")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs:
            raise _unsupported("logprobs")
        if self.tools:
            raise _unsupported(
                "tools", "serve the model with --engine vllm and vLLM's tool-call parser flags"
            )
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise _unsupported("response_format", "only {'type': 'text'} is")

    def template_messages(self) -> list[dict[str, str]]:
        return [m.for_template(i) for i, m in enumerate(self.messages)]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name, value in (("logprobs", self.logprobs), ("echo", self.echo),
                            ("suffix", self.suffix)):
            if value:
                raise _unsupported(name)
        if self.best_of not in (None, 1, self.n):
            raise _unsupported("best_of")
        if isinstance(self.prompt, list) and not self.prompt:
            raise InvalidRequest("prompt must not be empty.", param="prompt")

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a token array."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [cast(list[int], p)]
        return cast(list[str | list[int]], list(p))


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    def inputs(self) -> list[str] | list[list[int]]:
        x = self.input
        if isinstance(x, str):
            return [x]
        if not x:
            raise InvalidRequest("input must not be empty.", param="input")
        if all(isinstance(v, int) for v in x):
            return [cast(list[int], x)]
        return cast(list[str] | list[list[int]], list(x))


def resolve_max_tokens(requested: int | None, prompt_tokens: int, max_model_len: int) -> int:
    """vLLM's rule: the completion may fill what the prompt leaves of the context, no more."""
    if prompt_tokens >= max_model_len:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the "
            "messages.",
            param="messages",
        )
    if requested is None:
        return max_model_len - prompt_tokens
    if prompt_tokens + requested > max_model_len:
        raise context_length_error(max_model_len, prompt_tokens, requested)
    return requested


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], raw: bytes) -> Body:
    """Validate a JSON body; the 400 names the field, what is wrong, and the value sent."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        got = first.get("input")
        suffix = "" if first["type"] in ("missing", "json_invalid") else f" (got {got!r:.80})"
        raise InvalidRequest(f"{where}: {first['msg']}{suffix}", param=where) from None


def _unsupported(field: str, hint: str = "") -> InvalidRequest:
    tail = f"; {hint}" if hint else ""
    return InvalidRequest(
        f"{field!r} is not supported by the local backend's torch engine{tail}.", param=field
    )
