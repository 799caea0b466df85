"""What the gateway itself reads from each request body, declared once.

These models are the edge's validation (a bad value becomes a 400 naming the field) and the
request schemas of `/openapi.json`. They declare only the fields the gateway reads — routing,
admission, accounting and the translations to other wire formats — and allow every other key,
which passes through untouched: a new OpenAI parameter must not need a gateway release.

Validation runs on the parsed body and builds nothing the request path keeps (the result is
discarded), ~2–3 µs for a typical chat body. Depth is already bounded by the JSON parser
(`parse.parse_json_object`); sizes are bounded here, per field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from gateway.api.body_errors import anthropic_path, invalid_request, openai_path
from gateway.errors import InvalidRequest

# Upper bound for token counts clients send: a 32-bit signed int, as vLLM and every provider
# take them; far larger values only ever come from bugs or attacks (1e30 used to reach pricing).
MAX_TOKENS = 2**31 - 1
# OpenAI's own limits: 128 tools per request, 2048 embedding inputs, 4 stop sequences (we
# allow 16: other providers take more).
MAX_TOOLS = 128
MAX_INPUTS = 2048
MAX_MESSAGES = 100_000


class _Body(BaseModel):
    """Unknown keys pass; declared ones must have the declared JSON type (no coercion)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
User = Annotated[str, Field(max_length=512)]
Stop = str | Annotated[list[str], Field(max_length=16)]


# ---- OpenAI chat completions ----------------------------------------------------------------


class ImageURL(_Body):
    url: str


class ContentPart(_Body):
    type: str = Field(min_length=1)
    text: str | None = None
    image_url: ImageURL | str | None = None


class FunctionCall(_Body):
    name: str = Field(min_length=1)
    arguments: str | None = None


class ToolCall(_Body):
    id: str | None = None
    type: str | None = None
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class FunctionDef(_Body):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: str = Field(min_length=1)
    function: FunctionDef | None = None


class NamedTool(_Body):
    type: str
    function: FunctionCall | None = None


class JSONSchemaFormat(_Body):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: str
    json_schema: JSONSchemaFormat | None = None


class _Sampling(_Body):
    """What every OpenAI generation request may carry and the gateway reads."""

    model: ModelName
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    n: int | None = Field(None, ge=1, le=128)
    user: User | None = None
    stop: Stop | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


class ChatRequest(_Sampling):
    """`POST /v1/chat/completions` (https://platform.openai.com/docs/api-reference/chat)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: TokenCount | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | NamedTool | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


TokenIds = Annotated[list[int], Field(max_length=1_000_000)]
Inputs = (str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)] | TokenIds
          | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)])


class CompletionRequest(_Sampling):
    """`POST /v1/completions` (legacy text completions)."""

    prompt: Inputs


class EmbeddingRequest(_Body):
    """`POST /v1/embeddings`."""

    model: ModelName
    input: Inputs
    user: User | None = None
    dimensions: int | None = Field(None, ge=1, le=65_536)
    encoding_format: Literal["float", "base64"] | None = None
    # Embeddings have no stream form; `true` made the gateway wait for SSE from a backend that
    # answers JSON, and answer a healthy backend's reply with a 502.
    stream: Literal[False] | None = None


# ---- OpenAI Responses -------------------------------------------------------------------------
# Only the item and tool types the translation reads are typed; every other type (built-in
# tools, their call items) passes to a native backend as sent, so their fields are not checked.


class ResponsesPart(_Body):
    type: str = Field(min_length=1)
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None
    detail: str | None = None


ResponsesContent = str | Annotated[list[ResponsesPart], Field(max_length=MAX_MESSAGES)]


class ResponsesMessage(_Body):
    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: ResponsesContent


class ResponsesFunctionCall(_Body):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class ResponsesFunctionCallOutput(_Body):
    type: Literal["function_call_output"]
    call_id: str | None = Field(None, min_length=1)
    output: ResponsesContent


class ResponsesOtherItem(_Body):
    type: str | None = None


def _item_tag(v: Any) -> str:
    kind = v.get("type", "message" if "role" in v else None) if isinstance(v, dict) else None
    return {"message": "Message", "function_call": "FunctionCall",
            "function_call_output": "FunctionCallOutput"}.get(str(kind), "Other")


# Capitalised tags: error paths leave union members out (`_is_member`), e.g. `input[2].role`.
ResponsesItem = Annotated[
    Annotated[ResponsesMessage, Tag("Message")]
    | Annotated[ResponsesFunctionCall, Tag("FunctionCall")]
    | Annotated[ResponsesFunctionCallOutput, Tag("FunctionCallOutput")]
    | Annotated[ResponsesOtherItem, Tag("Other")],
    Discriminator(_item_tag)]


class ResponsesFunctionTool(_Body):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesOtherTool(_Body):
    type: str = Field(min_length=1)


ResponsesTool = Annotated[
    Annotated[ResponsesFunctionTool, Tag("Function")] | Annotated[ResponsesOtherTool, Tag("Other")],
    Discriminator(lambda v: "Function" if isinstance(v, dict) and v.get("type") == "function"
                  else "Other")]


class ResponsesToolChoice(_Body):
    type: str = Field(min_length=1)
    name: str | None = None
    mode: str | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None


class ResponsesTextFormat(_Body):
    type: str = Field(min_length=1)
    name: str | None = Field(None, max_length=256)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponsesText(_Body):
    format: ResponsesTextFormat | None = None


class ResponsesReasoning(_Body):
    effort: str | None = Field(None, max_length=32)


# OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)],
                          Annotated[str, Field(max_length=512)]], Field(max_length=16)]


class ResponsesRequest(_Body):
    """`POST /v1/responses` (https://platform.openai.com/docs/api-reference/responses/create)."""

    model: ModelName
    input: str | Annotated[list[ResponsesItem], Field(max_length=MAX_MESSAGES)] | None = None
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    stream: bool | None = None
    store: bool | None = None
    background: bool | None = None
    tools: Annotated[list[ResponsesTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponsesText | None = None
    reasoning: ResponsesReasoning | None = None
    max_output_tokens: TokenCount | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: User | None = None
    metadata: Metadata | None = None


# ---- Anthropic Messages ---------------------------------------------------------------------


class ContentBlock(_Body):
    type: str = Field(min_length=1)
    text: str | None = None


class AnthropicMessage(_Body):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class AnthropicTool(_Body):
    name: str = Field(min_length=1, max_length=256)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class AnthropicToolChoice(_Body):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class AnthropicMetadata(_Body):
    user_id: User | None = None


class AnthropicOutputFormat(_Body):
    type: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class AnthropicOutputConfig(_Body):
    format: AnthropicOutputFormat | None = None


class MessagesRequest(_Body):
    """`POST /v1/messages` (https://docs.anthropic.com/en/api/messages)."""

    model: ModelName
    max_tokens: TokenCount
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[ContentBlock] | None = None
    stream: bool | None = None
    stop_sequences: Annotated[list[str], Field(max_length=16)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: Annotated[list[AnthropicTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: AnthropicToolChoice | None = None
    metadata: AnthropicMetadata | None = None
    output_config: AnthropicOutputConfig | None = None  # its `format` → response_format


class CountTokensRequest(_Body):
    """`POST /v1/messages/count_tokens` (https://docs.anthropic.com/en/api/messages-count-tokens):
    a Messages request without the generation settings (`max_tokens` is not taken)."""

    model: ModelName
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[ContentBlock] | None = None
    tools: Annotated[list[AnthropicTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: AnthropicToolChoice | None = None
    output_config: AnthropicOutputConfig | None = None


# ---- reranking and scoring (Cohere's and Jina's rerank, vLLM's score) ------------------------

# Cohere refuses more than 10,000 documents in one rerank request.
MAX_DOCUMENTS = 10_000


class RerankDocument(_Body):
    text: str


class RerankRequest(_Body):
    """`POST /v1/rerank` (https://docs.cohere.com/reference/rerank, https://jina.ai/reranker;
    vLLM serves it at `/rerank`, `/v1/rerank`)."""

    model: ModelName
    query: str
    documents: list[str | RerankDocument] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(None, ge=0, le=MAX_DOCUMENTS)
    return_documents: bool | None = None
    # Reranking has no stream form (see EmbeddingRequest.stream).
    stream: Literal[False] | None = None


ScoreTexts = str | Annotated[list[str], Field(min_length=1, max_length=MAX_DOCUMENTS)]


class ScoreRequest(_Body):
    """`POST /v1/score` (vLLM's: https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html#score-api):
    one text against many (`text_1` a string) or pairs (two lists of one length)."""

    model: ModelName
    text_1: ScoreTexts
    text_2: ScoreTexts
    stream: Literal[False] | None = None


class ModerationRequest(_Body):
    """`POST /v1/moderations` (OpenAI's moderation API, passed through like embeddings). The
    gateway routes by `model`, so unlike OpenAI it must be named (a public model name)."""

    model: ModelName
    # A text, texts, or OpenAI's multimodal parts (`{"type": "text" | "image_url", …}`).
    input: str | Annotated[list[str | dict[str, Any]], Field(min_length=1,
                                                             max_length=MAX_INPUTS)]
    stream: Literal[False] | None = None


OPENAI_BODIES: dict[str, type[_Body]] = {
    "chat": ChatRequest, "completions": CompletionRequest, "embeddings": EmbeddingRequest,
    "rerank": RerankRequest, "score": ScoreRequest, "moderations": ModerationRequest,
}


def check_openai(endpoint: str, body: Any) -> None:
    """Raises InvalidRequest (param in OpenAI's `a[0].b` form) when a field the gateway reads is
    missing or of the wrong type or size."""
    try:
        OPENAI_BODIES[endpoint].model_validate(body)
    except ValidationError as err:
        raise invalid_request(err, openai_path) from None


def check_messages(body: Any, model: type[_Body] = MessagesRequest) -> None:
    """The same for `/v1/messages` (and, with `CountTokensRequest`, its `count_tokens`), in
    Anthropic's words and `a.0.b` paths."""
    if isinstance(body, dict) and body.get("messages") == []:
        raise InvalidRequest("messages: at least one message is required", param="messages",
                             code="invalid_value")
    try:
        model.model_validate(body)
    except ValidationError as err:
        raise invalid_request(err, anthropic_path, openai_style=False) from None


def check_responses(body: Any) -> None:
    """The same for `/v1/responses`, in OpenAI's words and paths (`input[2].content[0].text`)."""
    try:
        ResponsesRequest.model_validate(body)
    except ValidationError as err:
        raise invalid_request(err, openai_path) from None
