"""The stream stall timer (upstream.py): one lazy timer per stream in place of aiohttp's
per-read `sock_read`. Against a real loopback aiohttp server; the only timed assertions are
generous bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.policy.models import Timeouts
from gateway.upstream import UpstreamClient, UpstreamRequest, UpstreamResponse, UpstreamTimeout

pytestmark = pytest.mark.asyncio

LIMIT = 0.4  # the provider's first_byte: the stall limit
Script = Callable[[web.StreamResponse], Awaitable[None]]


async def _serve(script: Script) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await script(resp)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/v1/chat/completions"


async def _open(script: Script, limit: float = LIMIT,
                ) -> AsyncIterator[tuple[UpstreamClient, UpstreamResponse]]:
    runner, url = await _serve(script)
    client = UpstreamClient(timeouts=Timeouts(connect=2.0, first_byte=limit, total=30.0))
    try:
        resp = await client.send(UpstreamRequest(url, b"{}"))
        yield client, resp
    finally:
        await client.close()
        await runner.cleanup()


def _stall_timers() -> list[asyncio.TimerHandle]:
    """Timers still scheduled on the loop that bound an upstream read: ours or aiohttp's."""
    loop = asyncio.get_running_loop()
    scheduled = getattr(loop, "_scheduled", [])  # asyncio's own loop (pytest-asyncio's)
    return [h for h in scheduled if not h.cancelled()
            and getattr(getattr(h, "_callback", None), "__name__", "")
            in ("_on_stall", "_on_read_timeout")]


async def test_a_silent_upstream_mid_stream_raises_the_stall_timeout_after_about_the_limit(
) -> None:
    quiet = asyncio.Event()

    async def script(resp: web.StreamResponse) -> None:
        await resp.write(b'data: {"n":1}\n\n')
        await quiet.wait()  # never set: silent from here

    async for _, resp in _open(script):
        chunks = resp.chunks()
        assert await anext(chunks) == b'data: {"n":1}\n\n'
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="stalled past its timeout"):
            await anext(chunks)
        waited = time.monotonic() - t0
        assert LIMIT * 0.9 <= waited < LIMIT + 5.0
        resp.close()
        assert _stall_timers() == []


async def test_a_slow_reader_with_bytes_buffered_is_not_a_stall() -> None:
    async def script(resp: web.StreamResponse) -> None:
        await resp.write(b'data: {"n":1}\n\n')
        await resp.write(b'data: {"n":2}\n\n')
        await asyncio.sleep(LIMIT / 2)
        await resp.write(b"data: [DONE]\n\n")

    async for _, resp in _open(script):
        chunks = resp.chunks()
        got = [await anext(chunks)]
        # Reading nothing for well past the limit: the rest arrives and waits in the buffer,
        # its last byte more than a limit before the next read.
        await asyncio.sleep(LIMIT * 3)
        got += [c async for c in chunks]
        assert b"".join(got) == b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'
        assert _stall_timers() == []
        resp.release()


async def test_an_upstream_that_keeps_sending_outlives_the_limit_without_a_stall() -> None:
    limit = 1.0  # gaps of a tenth of it: a loaded machine's scheduling delays stay far below

    async def script(resp: web.StreamResponse) -> None:
        for i in range(25):  # 25 x 0.1 s: two and a half limits in all, so it is re-armed
            await resp.write(b'data: {"n":%d}\n\n' % i)
            await asyncio.sleep(limit / 10)

    async for _, resp in _open(script, limit):
        got = b"".join([c async for c in resp.chunks()])
        assert got.count(b"data:") == 25
        assert _stall_timers() == []
        resp.release()


async def test_closing_or_releasing_mid_stream_leaves_no_timer() -> None:
    quiet = asyncio.Event()

    async def script(resp: web.StreamResponse) -> None:
        await resp.write(b'data: {"n":1}\n\n')
        await quiet.wait()

    for end in ("close", "release"):
        async for _, resp in _open(script):
            chunks = resp.chunks()
            reader = asyncio.ensure_future(anext(chunks))
            await asyncio.sleep(0.05)
            assert await reader == b'data: {"n":1}\n\n'
            waiting = asyncio.ensure_future(anext(chunks))
            await asyncio.sleep(0.05)  # now waiting in readany, the timer armed
            assert _stall_timers() != []
            getattr(resp, end)()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            assert _stall_timers() == []


async def test_an_earlier_reader_closed_late_leaves_the_next_ones_timer_armed() -> None:
    """The proxy reads a stream's first bytes through one `chunks()` and the rest through
    another; the first is finalised whenever the loop gets to it."""
    quiet = asyncio.Event()

    async def script(resp: web.StreamResponse) -> None:
        await resp.write(b'data: {"n":1}\n\n')
        await quiet.wait()

    async for _, resp in _open(script):
        first = resp.chunks()
        assert await anext(first) == b'data: {"n":1}\n\n'
        rest = resp.chunks()
        waiting = asyncio.ensure_future(anext(rest))
        await asyncio.sleep(0.05)
        await first.aclose()  # closed at its `yield` while `rest` waits
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(waiting, LIMIT + 5.0)
        resp.close()
        assert _stall_timers() == []
