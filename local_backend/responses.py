"""OpenAI response bodies and SSE streams built from engine outputs, and the ASGI response
that runs a generation and aborts it the moment the client disconnects."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from local_backend.engine.sequence import SequenceOutput
from local_backend.engine.torch_engine import SequenceHandle
from local_backend.errors import BackendError, EngineFailure
from local_backend.protocol import StreamOptions

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Generation:
    """The sequences of one request (``n`` choices, or one per completion prompt)."""

    handles: list[SequenceHandle]
    prompt_tokens: int
    completion_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.completion_tokens = [0] * len(self.handles)

    def abort(self) -> None:
        for handle in self.handles:
            handle.abort()

    def usage(self) -> dict[str, int]:
        done = sum(self.completion_tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    async def outputs(self) -> AsyncIterator[tuple[int, SequenceOutput]]:
        """Outputs of all sequences as they come, tagged with the choice index."""
        if len(self.handles) == 1:
            async for out in self.handles[0]:
                self.completion_tokens[0] = out.completion_tokens
                yield 0, out
            return
        queue: asyncio.Queue[tuple[int, SequenceOutput]] = asyncio.Queue()

        async def pump(index: int, handle: SequenceHandle) -> None:
            async for out in handle:
                queue.put_nowait((index, out))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(self.handles)]
        try:
            remaining = len(tasks)
            while remaining:
                index, out = await queue.get()
                self.completion_tokens[index] = out.completion_tokens
                remaining -= out.finish_reason is not None
                yield index, out
        finally:
            for task in tasks:
                task.cancel()


@dataclass(frozen=True, slots=True)
class Shape:
    """What differs between chat and text completions on the wire."""

    object: str  # "chat.completion" or "text_completion"
    id_prefix: str

    @property
    def chat(self) -> bool:
        return self.object == "chat.completion"

    def choice(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    def delta(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            body = {"content": text} if text else {}
            return {"index": index, "delta": body, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


CHAT = Shape("chat.completion", "chatcmpl-")
COMPLETION = Shape("text_completion", "cmpl-")


async def complete(gen: Generation, shape: Shape, model: str) -> dict[str, Any]:
    """Run the generation to its end and build the non-streaming response body."""
    texts = [""] * len(gen.handles)
    finish: list[str | None] = [None] * len(gen.handles)
    async for index, out in gen.outputs():
        if out.error is not None:
            raise EngineFailure(f"Generation failed: {out.error}")
        texts[index] += out.text
        finish[index] = out.finish_reason
    return {
        "id": shape.id_prefix + uuid.uuid4().hex,
        "object": shape.object,
        "created": int(time.time()),
        "model": model,
        "choices": [shape.choice(i, texts[i], finish[i]) for i in range(len(texts))],
        "usage": gen.usage(),
    }


async def stream(
    gen: Generation, shape: Shape, model: str, options: StreamOptions | None
) -> AsyncIterator[bytes]:
    """The SSE stream of OpenAI chunks, as OpenAI and vLLM send it (see module docstring)."""
    include_usage = bool(options and options.include_usage)
    continuous = bool(options and options.continuous_usage_stats)
    head = {"id": shape.id_prefix + uuid.uuid4().hex,
            "object": shape.object + ".chunk" if shape.chat else shape.object,
            "created": int(time.time()), "model": model}

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        body: dict[str, Any] = {**head, "choices": choices}
        if continuous:
            body["usage"] = gen.usage()
        elif include_usage:
            body["usage"] = None  # OpenAI sends null on every chunk but the last
        return _sse(body)

    if shape.chat:  # the role arrives first, before any token
        for i in range(len(gen.handles)):
            role = {"role": "assistant", "content": ""}
            yield chunk([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}])
    async for index, out in gen.outputs():
        if out.error is not None:
            yield _sse(EngineFailure(f"Generation failed: {out.error}").body())
            break
        if out.finish_reason == "abort":
            return  # the client is gone; nobody reads further
        if out.text or out.finish_reason is not None:
            yield chunk([shape.delta(index, out.text, out.finish_reason)])
    else:
        if include_usage:
            yield _sse({**head, "choices": [], "usage": gen.usage()})
    yield DONE


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


class GenerationResponse:
    """ASGI response that runs a generation as its body and aborts it when the client leaves.

    The client's disconnect is watched for explicitly (a ``receive()`` of ``http.disconnect``),
    not inferred from a failed write: a request that waits for a batch slot, or a
    non-streaming one, writes nothing for a long time and must still leave promptly.
    """

    def __init__(
        self, body: AsyncIterator[bytes], *, abort: Callable[[], None], streaming: bool
    ) -> None:
        self._body = body
        self._abort = abort
        self._streaming = streaming

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        try:
            if self._streaming:
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ]})
                async for part in self._body:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                try:
                    payload, status = b"".join([part async for part in self._body]), 200
                except BackendError as exc:
                    payload, status = exc.json_bytes(), exc.status
                await send({"type": "http.response.start", "status": status, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ]})
                await send({"type": "http.response.body", "body": payload, "more_body": False})
        except OSError:
            pass  # the client went away mid-write; the finally block frees its sequences
        finally:
            watcher.cancel()
            self._abort()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._abort()


async def json_body(make: Callable[[], Any]) -> AsyncIterator[bytes]:
    """Adapt a coroutine that builds a JSON body to GenerationResponse's byte iterator."""
    yield json.dumps(await make(), ensure_ascii=False).encode()
