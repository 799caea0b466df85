"""Serving the app: bind the port first, then run uvicorn on that socket.

Binding before anything else starts makes a busy port one clear error before a model is
loaded, and lets clients that connect while the lifespan waits for local backends queue in the
kernel's backlog: they are answered once the gateway is ready, instead of being refused or
getting 503s. uvicorn runs with the gateway's HTTP protocol (`connection.py`: slow-client
timeouts, the connection cap) and logs through the gateway's handler.
"""

from __future__ import annotations

import errno
import gc
import inspect
import logging
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from gateway.connection import ConnectionLimits, connection_class
from gateway.observability.logs import adopt_uvicorn_logs
from gateway.policy.models import Policy, Server

log = logging.getLogger("gateway.server")

# The kernel queues this many connections while the gateway starts (uvicorn's default).
BACKLOG = 2048


class ListenError(Exception):
    """The address cannot be bound; the message names it and what to do."""


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A socket bound to host:port and already listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: rebind at once after a restart (TIME_WAIT); on Linux this does not let
    # two live servers share the port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ListenError(_listen_error(host, port, e)) from None
    return sock


def _listen_error(host: str, port: int, e: OSError) -> str:
    where = f"gateway: cannot listen on {host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"{where}: the port is already in use (another gateway or program holds it). "
                "Stop that process, or pick a free port with --port or server.port.")
    if e.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need privileges). Use a port "
                "of 1024 or above with --port or server.port.")
    if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
        return (f"{where}: {host!r} is not an address of this machine. Use 127.0.0.1, or "
                "0.0.0.0 for every interface, with --host or server.host.")
    return f"{where}: {e.strerror or e}."


# uvicorn warns about these, but they are what a client sent: at info, no client can fill the
# warning log (the upgrade lines come twice per request with an `Upgrade` header).
_CLIENT_CAUSED = ("Invalid HTTP request received.", "Unsupported upgrade request.",
                  "No supported WebSocket library detected.")


class _UvicornMessages(logging.Filter):
    """On `uvicorn.error`: client-caused warnings become info; the lifespan traceback for a
    local backend that did not start is dropped (the supervisor said why in one line, and
    `serve` repeats it on stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.levelno == logging.WARNING and msg.startswith(_CLIENT_CAUSED):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger("uvicorn.error").isEnabledFor(logging.INFO)
        return not (msg.startswith("Traceback") and "BackendStartError" in msg)


def build_config(app: Any, settings: Server, *, log_level: str = "warning",
                 graceful_timeout_s: float = 30.0, loop: str = "uvloop") -> uvicorn.Config:
    adopt_uvicorn_logs()
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _UvicornMessages) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(_UvicornMessages())
    return uvicorn.Config(
        app, loop=loop, lifespan="on", log_config=None, log_level=log_level, access_log=False,
        http=connection_class(ConnectionLimits.from_policy(settings)),
        # No WebSocket routes: an Upgrade request is served as plain HTTP, under the same
        # timeouts, instead of handing the connection to a protocol without them.
        ws="none",
        # Nothing reads the ASGI scope's client address or scheme (the console reads
        # x-forwarded-proto itself), so uvicorn's proxy-headers layer was pure per-request cost.
        proxy_headers=False,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=graceful_timeout_s,  # type: ignore[arg-type]  # a float works
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, with the gateway's start-up and shutdown hooks."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if not self.started:
            # Still in the lifespan, where loading a model can take minutes and uvicorn would
            # not look at the signal until it ends: stop waiting (and the backends) now.
            backends = getattr(self._app.state, "backends", None)
            if backends is not None:
                backends.interrupt()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            log.info("serving on http://%s:%d", host, port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn closes idle connections and waits for the busy ones: the proxy can
        # start winding down (and /ready answer 503) for the whole grace period.
        proxy = getattr(self._app.state, "proxy", None)
        begin_drain = getattr(proxy, "begin_drain", None)
        if begin_drain is not None:
            result = begin_drain(self.config.timeout_graceful_shutdown)
            if inspect.isawaitable(result):
                await result
        await super().shutdown(sockets)


def run_policy(policy: Policy, policy_path: str, sock: socket.socket, *,
               log_level: str = "warning", graceful_timeout_s: float = 30.0) -> int:
    """What `gateway serve` runs in each serving process: the app built from the policy,
    served on the already listening socket until a signal; the exit code."""
    from gateway.app import build_app

    app = build_app(policy, policy_path=policy_path)
    # Requests allocate short-lived objects fast; with CPython's default thresholds the
    # collector ran ~340 times a second at 3,000 req/s and each full pass re-scanned the
    # ~65,000 objects made at start-up (~12 % of the core, docs/benchmarks.md). Park those
    # in the permanent generation and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
    return serve(app, sock, policy.server, log_level=log_level,
                 graceful_timeout_s=graceful_timeout_s)


def serve(app: Any, sock: socket.socket, settings: Server, *, log_level: str = "warning",
          graceful_timeout_s: float = 30.0) -> int:
    """Run until a signal stops the gateway; the process exit code."""
    config = build_config(app, settings, log_level=log_level,
                          graceful_timeout_s=graceful_timeout_s)
    try:
        GatewayServer(config, app).run(sockets=[sock])
    except SystemExit as e:  # uvicorn exits 3 when the lifespan (start-up) failed
        reason = getattr(getattr(app.state, "backends", None), "start_error", None)
        print(f"gateway: start-up failed: {reason or 'the log above says why.'}",
              file=sys.stderr)
        return e.code if isinstance(e.code, int) else 3
    return 0
