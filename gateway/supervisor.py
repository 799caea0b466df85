"""Managed local backends: `kind: local` providers run as supervised `local-backend` processes.

Each gets a fixed loopback port for its lifetime (so its URL survives restarts), is restarted
with exponential backoff when it exits, and is stopped with the gateway. Readiness is gated by
the active health checks like any self-hosted endpoint: until its /health answers, its
deployments count as unhealthy and traffic goes elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, field

import aiohttp

from gateway.policy.models import LocalProvider, Policy

log = logging.getLogger("gateway.supervisor")


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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def command(cfg: LocalProvider, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "local_backend", "serve", "--model", cfg.model,
           "--host", "127.0.0.1", "--port", str(port), "--engine", cfg.engine]
    if cfg.embedding_model:
        cmd += ["--embedding-model", cfg.embedding_model]
    return cmd + list(cfg.args)


class LocalBackends:
    def __init__(self, policy: Policy, max_backoff_s: float = 30.0) -> None:
        self._backends: dict[str, _Backend] = {}
        self._max_backoff = max_backoff_s
        self._policy = policy

    def _wanted(self, policy: Policy) -> dict[str, LocalProvider]:
        return {n: p for n, p in policy.providers.items() if isinstance(p, LocalProvider)}

    async def start(self) -> None:
        await self.reconcile(self._policy)

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
        p = self._backends[name].proc
        return p.pid if p is not None else None

    async def _supervise(self, b: _Backend) -> None:
        backoff = 1.0
        while not b.stopping:
            cmd = command(b.config, b.port)
            log.info("starting local backend %s on port %d: %s", b.name, b.port, " ".join(cmd))
            started = asyncio.get_running_loop().time()
            try:
                b.proc = await asyncio.create_subprocess_exec(
                    *cmd, stdin=asyncio.subprocess.DEVNULL, env={**os.environ},
                    start_new_session=True)
            except OSError as e:
                log.error("cannot start local backend %s: %s", b.name, e)
                code: int | None = None
            else:
                watch = asyncio.get_running_loop().create_task(self._await_health(b))
                code = await b.proc.wait()
                watch.cancel()
            b.healthy = False
            if b.stopping:
                return
            # A backend that ran for a while before dying gets a fresh backoff.
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 1.0
            b.restarts += 1
            log.error("local backend %s exited with %s; restarting in %.0f s (restart #%d)",
                      b.name, code, backoff, b.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _await_health(self, b: _Backend) -> None:
        """Poll the new process's /health until it answers (model loading takes a while)."""
        url = f"http://127.0.0.1:{b.port}/health"
        async with aiohttp.ClientSession() as session:
            while not b.stopping:
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            b.healthy = True
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
