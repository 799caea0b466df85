"""A real HTTP server on loopback, in its own thread and event loop, scripted per test.

Every provider fake subclasses `FakeServer` and adds its wire format's routes. Faults are queued
and consumed one per request, in order:

    fake.fail_next(2, status=503)         # the next two requests get 503
    fake.delay_next(1, seconds=0.5)       # the next one waits before answering
    fake.hang_next(1)                     # the next one never answers
    fake.drop_stream_after(3)             # the next stream is cut after 3 chunks
    fake.stop() / fake.start()            # refuse connections, then come back on the same port

`fake.requests` records (path, headers, parsed JSON body) of every request received.

Subclasses answer in their provider's shape through three hooks shared here: `fail_body` (the
body of an injected failure), `stream` (an SSE reply that acts out drop/stall/error faults) and
the reply queue behind each fake's `reply_next`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Fault:
    kind: str  # "fail" | "delay" | "hang" | "drop" | "stall" | "sse_error"
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after_chunks: int = 0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str] = field(default_factory=dict)


SSE_HEADERS = {"Content-Type": "text/event-stream"}


def data_event(obj: Any, end: bytes = b"\n\n") -> bytes:
    """One `data:` SSE event holding `obj` as JSON."""
    return b"data: " + json.dumps(obj).encode() + end


def hello_words(n: int) -> list[str]:
    """The text every fake answers with by default, one piece per token: "Hello0 word1 …"."""
    return [f"{'Hello' if i == 0 else ' word'}{i}" for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeServer:
    def __init__(self, name: str = "fake", port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.requests: list[Recorded] = []
        self._faults: deque[Fault] = deque()
        # Scripted replies (`reply_next` of the fakes that take them), consumed in order.
        self._replies: deque[Any] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        # Streams the client (the gateway) abandoned before the end: proof of cancellation.
        self.client_gone = 0
        self.completed_streams = 0
        self.chunk_delay = 0.0
        # A request whose body contains this text fails with HTTP 500 every time (input that
        # crashes a backend's handler: a "poison" request).
        self.poison: str | None = None

    # ---- scripting ---------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, body: Any = None,
                  headers: dict[str, str] | None = None) -> None:
        for _ in range(n):
            self._push(Fault("fail", status=status, body=body, headers=dict(headers or {})))

    def delay_next(self, n: int = 1, seconds: float = 0.5) -> None:
        for _ in range(n):
            self._push(Fault("delay", seconds=seconds))

    def hang_next(self, n: int = 1) -> None:
        for _ in range(n):
            self._push(Fault("hang"))

    def drop_stream_after(self, chunks: int, n: int = 1) -> None:
        for _ in range(n):
            self._push(Fault("drop", after_chunks=chunks))

    def stall_stream_after(self, chunks: int, seconds: float = 30.0) -> None:
        self._push(Fault("stall", after_chunks=chunks, seconds=seconds))

    def error_event_after(self, chunks: int, body: Any = None) -> None:
        self._push(Fault("sse_error", after_chunks=chunks, body=body))

    def _push(self, f: Fault) -> None:
        with self._lock:
            self._faults.append(f)

    def take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def queue_reply(self, reply: Any) -> None:
        with self._lock:
            self._replies.append(reply)

    def next_reply(self) -> Any:
        """The next scripted reply, or None when none is queued."""
        with self._lock:
            return self._replies.popleft() if self._replies else None

    def bodies(self, path_suffix: str = "") -> list[Any]:
        return [r.body for r in self.requests if r.path.endswith(path_suffix)]

    # ---- serving -----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            self.routes(app)
            runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            self._runner = runner
            try:
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
                loop.run_until_complete(site.start())
            except BaseException as e:
                errors.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection: new connections are refused."""
        if self._loop is None or self._thread is None:
            return
        loop = self._loop
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers for subclasses --------------------------------------------------------------

    async def record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(Recorded(request.path, dict(request.headers), body,
                                      dict(request.query)))
        return body

    def poison_fault(self, body: Any) -> Fault | None:
        if self.poison is not None and self.poison in json.dumps(body):
            return Fault("fail", status=500)
        return None

    def fail_body(self, status: int) -> Any:
        """The body of a `fail_next` failure queued without one: OpenAI's error shape here,
        each provider's own in its fake."""
        return {"error": {"message": f"{self.name} injected failure", "type": "server_error",
                          "param": None, "code": None}}

    async def apply_pre_fault(self, fault: Fault | None) -> web.Response | None:
        """Faults that act before the response starts."""
        if fault is None:
            return None
        if fault.kind == "fail":
            body = fault.body if fault.body is not None else self.fail_body(fault.status)
            text = body if isinstance(body, str) else json.dumps(body)
            return web.Response(status=fault.status, text=text, headers=fault.headers,
                                content_type="application/json")
        if fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "hang":
            await asyncio.sleep(3600)
        return None

    async def stream(self, request: web.Request, events: Sequence[bytes], fault: Fault | None,
                     error: Any, *, frame: Callable[[Any], bytes] = data_event,
                     headers: Mapping[str, str] = SSE_HEADERS) -> web.StreamResponse:
        """Send `events` as one SSE reply, acting out a mid-stream fault when it is due: before
        event `fault.after_chunks` the connection drops, stalls, or gets one error event
        (`frame(fault.body or error)`) and ends."""
        resp = web.StreamResponse(headers=dict(headers))
        await resp.prepare(request)
        try:
            for n, event in enumerate(events):
                if fault is not None and fault.kind in ("drop", "stall", "sse_error") \
                        and n == fault.after_chunks:
                    if fault.kind == "drop":
                        request.transport.close()  # type: ignore[union-attr]
                        return resp
                    if fault.kind == "sse_error":
                        await resp.write(frame(fault.body or error))
                        return resp
                    await asyncio.sleep(fault.seconds)
                await resp.write(event)
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await resp.write_eof()
            self.completed_streams += 1
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.client_gone += 1
            raise
        return resp

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1


def wait_until(cond: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
