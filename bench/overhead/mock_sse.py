"""A lean mock upstream for streamed chat completions: raw asyncio, no framework.

    python -m bench.overhead.mock_sse --port 9001 --chunks 20 --delay-ms 5

Every POST gets an OpenAI-shaped SSE stream: `--chunks` chunks (the role, then content), each
after `--delay-ms` (the first one too), then a usage chunk when the request asked for
`stream_options.include_usage`, then `data: [DONE]`. A request without `"stream": true` gets
one static chat completion. A path ending in `/responses` is the Responses API: its typed
events instead, on the same clock (the lifecycle events up to the open content part after
one delay, then `--chunks - 1` `response.output_text.delta`s one delay apart, then the `….done`
events and `response.completed` with usage: `responses_wire.py`), or its static Response.
HTTP/1.1 keep-alive with chunked framing, so proxies keep their pooled connections.

It does the least per request that a real server must (read headers and the body, write
chunks); the point is that it costs little CPU on the load generator's core.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.overhead import responses_wire
from bench.overhead.responses_wire import CREATED

STATIC = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED,
    "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "Hello! How can I help you today?"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}, separators=(",", ":")).encode()


def _chunk(data: bytes) -> bytes:
    # One HTTP/1.1 chunk per SSE event: proxies see event boundaries as a real server sends them.
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict[str, object]) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def stream_events(model: str, chunks: int) -> tuple[list[bytes], bytes, bytes]:
    """(content chunks, the usage chunk, the [DONE] chunk and the end of the body)."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
            "model": model}
    out = [_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                "content": ""},
                                        "finish_reason": None}]})]
    for i in range(1, chunks):
        last = i == chunks - 1
        out.append(_event({**base, "choices": [{"index": 0, "delta": {"content": f" tok{i}"},
                                                "finish_reason": "stop" if last else None}]}))
    usage = _event({**base, "choices": [], "usage": {
        "prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}})
    done = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    return out, usage, done


def responses_stream(model: str, chunks: int) -> tuple[list[bytes], bytes]:
    """A Responses stream as written: (what is sent after each delay, what ends the body)."""
    first, deltas, closing = responses_wire.stream_events(model, chunks)
    timed = [b"".join(_chunk(e) for e in first), *(_chunk(e) for e in deltas)]
    return timed, b"".join(_chunk(e) for e in closing) + b"0\r\n\r\n"


_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_STATIC_REPLY = _JSON_HEAD % len(STATIC) + STATIC
_STATIC_RESPONSE = _JSON_HEAD % len(responses_wire.STATIC) + responses_wire.STATIC


class MockSSE:
    def __init__(self, chunks: int, delay: float, max_body: int = 1 << 20) -> None:
        self.chunks = chunks
        self.delay = delay
        self.max_body = max_body
        self._cache: dict[str, tuple[list[bytes], bytes, bytes]] = {}
        self._responses: dict[str, tuple[list[bytes], bytes]] = {}

    def _events(self, model: str) -> tuple[list[bytes], bytes, bytes]:
        ev = self._cache.get(model)
        if ev is None:
            ev = self._cache[model] = stream_events(model, self.chunks)
        return ev

    def _response_events(self, model: str) -> tuple[list[bytes], bytes]:
        ev = self._responses.get(model)
        if ev is None:
            ev = self._responses[model] = responses_stream(model, self.chunks)
        return ev

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length > self.max_body:
                    return
                body = await reader.readexactly(length) if length else b""
                # The request line's path: `POST /v1/responses HTTP/1.1`.
                path = head.split(b"\r\n", 1)[0].split(b" ")[1:2]
                responses = bool(path) and path[0].split(b"?", 1)[0].endswith(b"/responses")
                await self._reply(body, writer, responses)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _reply(self, body: bytes, writer: asyncio.StreamWriter, responses: bool) -> None:
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        if not isinstance(req, dict) or req.get("stream") is not True:
            writer.write(_STATIC_RESPONSE if responses else _STATIC_REPLY)
            await writer.drain()
            return
        if responses:
            timed, end = self._response_events(str(req.get("model", "bench-responses")))
            writer.write(_STREAM_HEAD)
            for ev in timed:
                await asyncio.sleep(self.delay)
                writer.write(ev)
                await writer.drain()
            writer.write(end)
            await writer.drain()
            return
        opts = req.get("stream_options")
        usage_wanted = isinstance(opts, dict) and opts.get("include_usage") is True
        content, usage, done = self._events(str(req.get("model", "bench-model")))
        writer.write(_STREAM_HEAD)
        for ev in content:
            await asyncio.sleep(self.delay)
            writer.write(ev)
            await writer.drain()
        writer.write((usage if usage_wanted else b"") + done)
        await writer.drain()


async def serve(port: int, chunks: int, delay: float, run_for: float) -> None:
    mock = MockSSE(chunks, delay)
    server = await asyncio.start_server(mock.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        # Bounded: the orchestrator stops it, and it stops itself after --run-for seconds.
        await asyncio.sleep(run_for)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument("--run-for", type=float, default=3600.0, help="exit after this many seconds")
    a = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(a.port, a.chunks, a.delay_ms / 1000, a.run_for))


if __name__ == "__main__":
    main()
