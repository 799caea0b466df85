"""The two client APIs the benchmark drives: chat completions and OpenAI's Responses API. Each
says what the load generators send, which path they send it to, how a reply is checked before
a target is measured, and which bytes of a stream mark its first token and its end."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from bench.overhead import stream_client, wrk


def _responses_json(model: str, store: bool | None) -> str:
    body: dict[str, object] = {"model": model, "input": "Hello, how are you?",
                               "max_output_tokens": 16}
    if store is not None:
        body["store"] = store
    return json.dumps(body, separators=(",", ":"))


def _responses_stream(model: str, store: bool | None) -> bytes:
    body: dict[str, object] = {"model": model, "stream": True, "max_output_tokens": 64,
                               "input": "Count to twenty."}
    if store is not None:
        body["store"] = store
    return json.dumps(body, separators=(",", ":")).encode()


# Prose to pad a prompt with: words, punctuation, quotes and non-ASCII letters (each costs a JSON
# encoder an escape or a multi-byte copy), and line breaks, as a RAG or coding prompt has.
_FILLER = ('The retrieved passage says "see section 4.2" and then — in a footnote — that the '
           "café's schema uses {\"id\": 7}; résumé, naïve, Zürich.\n")


def padded(body: str, kb: int) -> str:
    """`body` (a chat or Responses request) with its prompt grown to make the body about `kb`
    KiB: the last message's `content`, or the Responses `input` text."""
    if kb <= 0:
        return body
    obj = json.loads(body)
    size = len(body.encode())
    unit = len(json.dumps(_FILLER, ensure_ascii=False).encode()) - 2  # as it is sent
    text = _FILLER * (max(0, kb * 1024 - size) // unit + 1)
    if "messages" in obj:
        obj["messages"][-1]["content"] = text + obj["messages"][-1]["content"]
    else:
        obj["input"] = text + obj["input"]
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def check_completion(reply: bytes) -> None:
    obj = json.loads(reply)
    if not obj.get("choices"):
        raise RuntimeError(f"reply without choices: {reply[:300]!r}")


def check_chat_stream(reply: bytes) -> None:
    if b"[DONE]" not in reply:
        raise RuntimeError(f"stream reply without [DONE]: {reply[:300]!r}")


def check_response(reply: bytes) -> None:
    obj = json.loads(reply)
    if obj.get("object") != "response" or obj.get("status") != "completed" \
            or not obj.get("output"):
        raise RuntimeError(f"not a completed Response object: {reply[:300]!r}")


def check_response_stream(reply: bytes) -> None:
    if b"response.output_text.delta" not in reply or b"response.completed" not in reply:
        raise RuntimeError(f"Responses stream without output deltas and response.completed: "
                           f"{reply[:300]!r}")


@dataclass(frozen=True)
class Api:
    name: str
    path: str                                  # under the base URL (…/v1)
    json_body: Callable[[str, bool | None], str]     # (model, store) → non-streaming body
    stream_body: Callable[[str, bool | None], bytes]  # (model, store) → streaming body
    check_reply: Callable[[bytes], None]
    check_stream: Callable[[bytes], None]
    marks: stream_client.Markers  # a stream's first content token and its end


CHAT = Api(
    "chat", "/chat/completions",
    lambda model, store: wrk.BODY.replace("bench-model", model),
    lambda model, store: stream_client.body_for(model),
    check_completion, check_chat_stream, stream_client.Markers(b" tok", b"[DONE]"))

RESPONSES = Api(
    "responses", "/responses", _responses_json, _responses_stream,
    check_response, check_response_stream,
    stream_client.Markers(b"response.output_text.delta", b"response.completed"))

APIS = {a.name: a for a in (CHAT, RESPONSES)}
