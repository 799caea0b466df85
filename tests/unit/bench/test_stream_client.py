"""The streaming load client reads both APIs' streams from the SSE mock: each request counted
once, with a first token and an end, whichever bytes mark them and however reads split them."""

from __future__ import annotations

import asyncio
import math

import pytest

from bench.overhead import stream_client
from bench.overhead.apis import APIS
from tests.unit.bench.mock_server import SSEServer

CHUNKS = 5


@pytest.mark.parametrize("api_name", sorted(APIS))
def test_counts_whole_streams_with_a_first_token(api_name: str) -> None:
    api = APIS[api_name]
    with SSEServer(CHUNKS) as server:
        res = stream_client.run(server.url + api.path, api.stream_body("bench-stream", False),
                                concurrency=2, seconds=0.2, marks=api.marks)
    assert res["errors"] == 0 and res["requests"] > 0
    assert not math.isnan(res["ttft_ms"]["p50"]) and not math.isnan(res["total_ms"]["p50"])
    # Chat: role and content chunks, then [DONE] (no usage asked); Responses: four lifecycle
    # events, the deltas, four closing events.
    per_stream = CHUNKS + 1 if api_name == "chat" else 4 + (CHUNKS - 1) + 4
    assert res["events"] == per_stream * res["requests"]


async def _split_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One chat stream whose content token and `[DONE]` each arrive split over two reads."""
    await reader.readuntil(b"\r\n\r\n")  # the body is small: one read takes it all
    await reader.read(65536)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Connection: close\r\n\r\n")
    for piece in (b'data: {"c":" t', b'ok1"}\n\ndata: [DO', b"NE]\n\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)  # apart, so the client reads them apart
    writer.close()


def test_a_marker_split_across_reads_is_still_found() -> None:
    with SSEServer(0, handle=_split_stream) as server:
        res = stream_client.run(server.url + "/chat/completions", b"{}", concurrency=1,
                                seconds=0.01, marks=APIS["chat"].marks)
    assert res["errors"] == 0 and res["requests"] == 1
    assert not math.isnan(res["ttft_ms"]["p50"])
