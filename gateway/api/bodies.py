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

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

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


OPENAI_BODIES: dict[str, type[_Body]] = {
    "chat": ChatRequest, "completions": CompletionRequest, "embeddings": EmbeddingRequest,
}


# ---- errors ---------------------------------------------------------------------------------

Path = tuple[int | str, ...]


def openai_path(loc: Path) -> str:
    """`messages[0].role`, as OpenAI names parameters."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def anthropic_path(loc: Path) -> str:
    """`messages.0.role`, as Anthropic names them."""
    return ".".join(str(p) for p in loc)


def _loc(e: ErrorDetails) -> Path:
    # A union's member name ("str", "list[ContentPart]", "function-after[...]") is pydantic's,
    # not the client's: keep only the keys and indices the client wrote.
    return tuple(p for p in e["loc"] if isinstance(p, int) or not _is_member(p))


def _is_member(part: str) -> bool:
    return "[" in part or part[:1].isupper() or part in {"str", "int", "float", "bool", "dict",
                                                          "list", "none"}


def _best(errors: list[ErrorDetails]) -> ErrorDetails:
    """One error to report: the first field's (fields validate in declaration order, so the
    most basic — `model` — comes first). A value that matched no member of a union yields one
    error per member; the deepest is the informative one (the member the client meant)."""
    field = errors[0]["loc"][:1]
    same = [e for e in errors if e["loc"][:1] == field]
    return max(same, key=lambda e: len(_loc(e)))


def invalid_request(err: ValidationError, render: Callable[[Path], str],
                    openai_style: bool = True) -> InvalidRequest:
    e = _best(err.errors(include_url=False))
    if not e["loc"]:  # the body itself: JSON, but not an object
        return InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    param = render(_loc(e))
    kind = e["type"]
    if kind == "missing":
        msg = (f"Missing required parameter: '{param}'." if openai_style
               else f"{param}: Field required")
        if param == "model" and openai_style:  # OpenAI's own words for the commonest slip
            msg = "You must provide a model parameter (a model name string)."
        return InvalidRequest(msg, param=param, code="missing_required_parameter")
    got = e.get("input")
    text = _MESSAGES.get(kind) or e["msg"].replace(" after validation", "")
    shown = "" if isinstance(got, dict | list) else f" (got {_short(got)})"
    code = "invalid_type" if kind.endswith("_type") or kind == "model_attributes_type" \
        else "invalid_value"
    if openai_style:
        msg = f"Invalid value for '{param}': {text}{shown}."
    else:
        msg = f"{param}: {text}{shown}"
    return InvalidRequest(msg, param=param, code=code)


# pydantic's wording names our classes ("instance of StreamOptions"); say it in JSON terms.
_MESSAGES = {"model_type": "Input should be a JSON object",
             "model_attributes_type": "Input should be a JSON object",
             "dict_type": "Input should be a JSON object"}


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_openai(endpoint: str, body: Any) -> None:
    """Raises InvalidRequest (param in OpenAI's `a[0].b` form) when a field the gateway reads is
    missing or of the wrong type or size."""
    try:
        OPENAI_BODIES[endpoint].model_validate(body)
    except ValidationError as err:
        raise invalid_request(err, openai_path) from None


def check_messages(body: Any) -> None:
    """The same for `/v1/messages`, in Anthropic's words and `a.0.b` paths."""
    if isinstance(body, dict) and body.get("messages") == []:
        raise InvalidRequest("messages: at least one message is required", param="messages",
                             code="invalid_value")
    try:
        MessagesRequest.model_validate(body)
    except ValidationError as err:
        raise invalid_request(err, anthropic_path, openai_style=False) from None
