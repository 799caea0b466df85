"""Managed local backends: `kind: local` providers run as supervised `local-backend` processes.

Each gets a fixed loopback port for its lifetime (so its URL survives restarts), is restarted
with exponential backoff when it exits, and is stopped with the gateway. At start,
`wait_ready()` holds the gateway back until every backend answers /health (the gateway then
opens with its models servable, not with 503s). Later — after a restart, or for a backend a
reload added — readiness is gated by the active health checks like any self-hosted endpoint:
until its /health answers, its deployments count as unhealthy and traffic goes elsewhere.
Its stdout and stderr join the gateway's log (`observability.child_output`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from gateway.observability.child_output import LINE_LIMIT, relay
from gateway.policy.models import LocalProvider, Policy

log = logging.getLogger("gateway.supervisor")


class BackendStartError(Exception):
    """A local backend did not come up at start; the message names it and what to do."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Backend:
    name: str
    config: LocalProvider
    port: int
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    stopping: bool = False
    # True once /health answered 200 since the last (re)start: readiness is health-gated.
    healthy: bool = False
    args: list[str] = field(default_factory=list)
    # Set when the first start is decided: healthy, or `failure` says why not.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str | None = None
    # Its last lines of output, for the message when it fails to start.
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def command(cfg: LocalProvider, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "local_backend", "serve", "--model", cfg.model,
           "--host", "127.0.0.1", "--port", str(port), "--engine", cfg.engine]
    if cfg.embedding_model:
        cmd += ["--embedding-model", cfg.embedding_model]
    return cmd + list(cfg.args)


Command = Callable[[LocalProvider, int], list[str]]


class LocalBackends:
    def __init__(self, policy: Policy, max_backoff_s: float = 30.0,
                 command_line: Command = command) -> None:
        self._backends: dict[str, _Backend] = {}
        self._max_backoff = max_backoff_s
        self._policy = policy
        self._command = command_line
        # While `wait_ready()` runs, a backend that exits is a failed start, not a restart.
        self._starting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Why the last `wait_ready()` failed, for the one line `gateway serve` exits with.
        self.start_error: str | None = None

    def _wanted(self, policy: Policy) -> dict[str, LocalProvider]:
        return {n: p for n, p in policy.providers.items() if isinstance(p, LocalProvider)}

    async def start(self) -> None:
        await self.reconcile(self._policy)

    async def wait_ready(self) -> None:
        """Return once every backend answers /health. If one exits first, or misses its
        `start_timeout_s`, stop them all and raise `BackendStartError` naming it."""
        if not self._backends:
            return
        log.info("waiting for local backends to answer /health: %s", ", ".join(self._backends))
        self._starting = True
        self._loop = asyncio.get_running_loop()
        error: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                for b in self._backends.values():
                    tg.create_task(self._settled(b))
        except* BackendStartError as group:
            error = group.exceptions[0]
        finally:
            self._starting = False
            self._loop = None
        if error is not None:
            self.start_error = str(error)
            log.error("%s", error)
            await self.stop()
            raise error

    def interrupt(self) -> None:
        """Give up `wait_ready()`: a signal arrived while models load. Called from a signal
        handler, so it only schedules the change on the loop."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._give_up_start)

    def _give_up_start(self) -> None:
        for b in self._backends.values():
            if not b.settled.is_set():
                b.failure = (f"start-up interrupted by a signal while local backend {b.name!r} "
                             "was loading; it has been stopped.")
                b.settled.set()

    async def _settled(self, b: _Backend) -> None:
        timeout = b.config.start_timeout_s
        try:
            await asyncio.wait_for(b.settled.wait(), timeout)
        except TimeoutError:
            raise BackendStartError(
                f"local backend {b.name!r} did not answer /health within {timeout:g} s "
                f"(providers.{b.name}.start_timeout_s). If its model is still loading, raise "
                "that; otherwise its log lines above (logger gateway.local_backend) say what it "
                "is doing.") from None
        if b.failure is not None:
            raise BackendStartError(b.failure)

    async def reconcile(self, policy: Policy) -> None:
        """Start backends the policy added or changed; stop the ones it removed."""
        wanted = self._wanted(policy)
        for name in list(self._backends):
            b = self._backends[name]
            if name not in wanted or wanted[name] != b.config:
                await self._stop_one(b)
                del self._backends[name]
        for name, cfg in wanted.items():
            if name not in self._backends:
                b = _Backend(name, cfg, cfg.port or _free_port())
                self._backends[name] = b
                b.task = asyncio.get_running_loop().create_task(self._supervise(b))

    def resolve(self, policy: Policy) -> Policy:
        """The policy with each local provider's base_url pointing at its process."""
        if not self._backends:
            return policy
        providers = dict(policy.providers)
        for name, b in self._backends.items():
            if name in providers:
                providers[name] = providers[name].model_copy(update={"base_url": b.base_url})
        return policy.model_copy(update={"providers": providers})

    def restarts(self, name: str) -> int:
        return self._backends[name].restarts

    def pid(self, name: str) -> int | None:
        """The backend's process id; None before it starts (or for a name not running)."""
        b = self._backends.get(name)
        return b.proc.pid if b is not None and b.proc is not None else None

    async def _supervise(self, b: _Backend) -> None:
        backoff = 1.0
        while not b.stopping:
            started = asyncio.get_running_loop().time()
            code = await self._run_once(b)
            b.healthy = False
            if b.stopping:
                return
            if not b.settled.is_set() and self._starting:
                last = f" Its last output: {b.recent[-1]!r}." if b.recent else ""
                what = "could not be started" if code is None else f"exited with code {code}"
                b.failure = (f"local backend {b.name!r} {what} before it answered /health."
                             f"{last} Its log lines above (logger gateway.local_backend) say "
                             "why.")
                b.settled.set()
                return
            # A backend that ran for a while before dying gets a fresh backoff.
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 1.0
            b.restarts += 1
            log.error("local backend %s exited with %s; restarting in %.0f s (restart #%d)",
                      b.name, code, backoff, b.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _run_once(self, b: _Backend) -> int | None:
        """Start the process, relay its output and watch its health until it exits."""
        cmd = self._command(b.config, b.port)
        log.info("starting local backend %s on port %d: %s", b.name, b.port, " ".join(cmd))
        try:
            # Unbuffered: through a pipe Python would hold its stdout back in 8 KiB blocks.
            b.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True, limit=LINE_LIMIT)
        except OSError as e:
            log.error("cannot start local backend %s: %s", b.name, e)
            b.recent.append(str(e))
            return None
        assert b.proc.stdout is not None and b.proc.stderr is not None
        loop = asyncio.get_running_loop()
        relays = [loop.create_task(relay(stream, {"backend": b.name, "pid": b.proc.pid,
                                                  "stream": name}, b.recent))
                  for name, stream in (("stdout", b.proc.stdout), ("stderr", b.proc.stderr))]
        watch = loop.create_task(self._await_health(b))
        try:
            code = await b.proc.wait()
            # The rest of its output is still in the pipes; a child of its own (vLLM's engine
            # process) may hold them open, so do not wait on them for long.
            await asyncio.wait(relays, timeout=2)
            return code
        finally:
            watch.cancel()
            for r in relays:
                r.cancel()

    async def _await_health(self, b: _Backend) -> None:
        """Poll the new process's /health until it answers (model loading takes a while)."""
        url = f"http://127.0.0.1:{b.port}/health"
        async with aiohttp.ClientSession() as session:
            while not b.stopping:
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            b.healthy = True
                            b.settled.set()
                            log.info("local backend %s is ready on port %d", b.name, b.port)
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.25)

    def starting(self) -> frozenset[str]:
        """Providers whose process is not (yet, or no longer) answering /health."""
        return frozenset(n for n, b in self._backends.items() if not b.healthy)

    async def _stop_one(self, b: _Backend) -> None:
        b.stopping = True
        if b.proc is not None and b.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                b.proc.terminate()
            try:
                await asyncio.wait_for(b.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    b.proc.kill()
                await b.proc.wait()
        if b.task is not None:
            b.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await b.task

    async def stop(self) -> None:
        for b in list(self._backends.values()):
            await self._stop_one(b)
        self._backends.clear()
