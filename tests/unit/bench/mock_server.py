"""The benchmark's SSE mock (`bench/overhead/mock_sse.py`), served for real on loopback from
a thread, for the tests of what it sends and of the streaming client that reads it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from bench.overhead.mock_sse import MockSSE
from bench.overhead.procs import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class SSEServer:
    """`MockSSE` (or another raw asyncio handler) on a free loopback port, on its own event
    loop in a thread."""

    def __init__(self, chunks: int, delay_s: float = 0.001,
                 handle: Handler | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._handle = handle or MockSSE(chunks, delay_s).handle
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._stop = self._loop.create_future()
        self._ready.set()
        async with server:
            await self._stop

    def __enter__(self) -> SSEServer:
        self._thread.start()
        assert self._ready.wait(10), "the SSE mock did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)
        self._loop.close()
