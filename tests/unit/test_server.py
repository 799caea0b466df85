"""gateway.server on small ASGI apps: binding errors, the shutdown drain hook, and a signal
during start-up stopping local backends that are still loading."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.policy.load import parse_policy
from gateway.policy.models import LocalProvider, Server
from gateway.server import GatewayServer, ListenError, build_config, listen
from gateway.supervisor import LocalBackends
from tests.fakes.base import wait_until


def test_a_busy_port_is_one_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ListenError) as e:
            listen("127.0.0.1", port)
    assert str(e.value) == (
        f"gateway: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
        "gateway or program holds it). Stop that process, or pick a free port with --port or "
        "server.port.")


def test_an_address_not_on_this_machine_says_what_to_use() -> None:
    with pytest.raises(ListenError, match=r"is not an address of this machine\. Use 127\.0\.0\.1"):
        listen("203.0.113.7", 0)  # TEST-NET-3: never local


def test_the_socket_listens_before_anything_serves_it() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        # Connecting succeeds at once: the kernel queues it until uvicorn accepts.
        socket.create_connection(sock.getsockname(), timeout=2).close()
    finally:
        sock.close()


def _run(server: GatewayServer, sock: socket.socket,
         exits: list[Any] | None = None) -> threading.Thread:
    def main() -> None:
        try:
            asyncio.run(server.serve([sock]))
        except SystemExit as e:  # uvicorn's exit when start-up fails
            if exits is not None:
                exits.append(e.code)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread


class _DrainingProxy:
    """Stands in for the proxy's drain interface (`begin_drain`, `draining`)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.draining = False

    def begin_drain(self, grace_s: float) -> None:
        self.calls.append(grace_s)
        self.draining = True


def test_shutdown_begins_the_drain_while_requests_are_still_running() -> None:
    release = threading.Event()

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.to_thread(release.wait, 10)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow)])
    app.state.proxy = proxy = _DrainingProxy()
    sock = listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/slow"
    server = GatewayServer(build_config(app, Server(), graceful_timeout_s=7, loop="asyncio"), app)
    thread = _run(server, sock)
    assert wait_until(lambda: server.started, timeout=10)
    replies: list[httpx.Response] = []
    client = threading.Thread(target=lambda: replies.append(httpx.get(url, timeout=10)))
    client.start()
    assert wait_until(lambda: len(server.server_state.tasks) == 1, timeout=10)
    server.should_exit = True
    # Called with the grace period, while the request is still in flight.
    assert wait_until(lambda: proxy.calls == [7], timeout=10)
    assert not replies
    release.set()
    client.join(10)
    thread.join(10)
    assert replies[0].status_code == 200 and not thread.is_alive()


SLEEPER = "import time; time.sleep(120)"


def test_a_signal_during_start_up_stops_backends_that_are_still_loading() -> None:
    policy = parse_policy("""
providers:
  local: {kind: local, model: m}
models:
  chat: {deployments: [{provider: local, model: m}]}
""", "p.yaml", {})

    def sleeper(cfg: LocalProvider, port: int) -> list[str]:
        return [sys.executable, "-c", SLEEPER]

    backends = LocalBackends(policy, command_line=sleeper)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await backends.start()
        await backends.wait_ready()
        yield

    app = Starlette(lifespan=lifespan)
    app.state.backends = backends
    server = GatewayServer(build_config(app, Server(), loop="asyncio"), app)
    exits: list[Any] = []
    thread = _run(server, listen("127.0.0.1", 0), exits)
    assert wait_until(lambda: backends.pid("local") is not None, timeout=10)
    pid = backends.pid("local")
    server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
    thread.join(15)
    assert not thread.is_alive() and not server.started and exits == [3]
    assert backends.start_error is not None and "interrupted by a signal" in backends.start_error
    assert wait_until(lambda: _gone(pid), timeout=10)


def _gone(pid: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True
