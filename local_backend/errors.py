"""Errors a client of the local backend sees, rendered as OpenAI error objects."""

from __future__ import annotations

import json


class BackendError(Exception):
    """An error with an HTTP status and OpenAI ``type``/``code``; subclasses set the defaults."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode()


class InvalidRequest(BackendError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    # The gateway classifies a 400 whose message says "maximum context length" as a
    # context-length error (vLLM's wording), and OpenAI's code says the same thing.
    code = "context_length_exceeded"


class ModelNotFound(BackendError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class EngineFailure(BackendError):
    status = 500
    type = "api_error"
    code = "engine_error"


def context_length_error(max_model_len: int, prompt_tokens: int, max_tokens: int) -> BackendError:
    """vLLM's message for a prompt (plus requested completion) longer than the model allows."""
    return ContextLengthExceeded(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
        "the completion). Please reduce the length of the messages or completion.",
        param="messages",
    )
