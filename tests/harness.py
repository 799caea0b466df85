"""Run the real gateway on a free loopback port: in a thread (one process) or as a subprocess
(replicas)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.app import build_app
from gateway.policy.load import parse_policy
from gateway.server import GatewayServer, build_config, listen
from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parent.parent


def policy_text(policy: str | dict[str, Any]) -> str:
    return policy if isinstance(policy, str) else yaml.safe_dump(policy, sort_keys=False)


def wait_ready(url: str, timeout: float = 20.0, path: str = "/health",
               alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.02)
    if not alive():
        raise RuntimeError(f"{url}: the gateway stopped before it was ready: {last}")
    raise TimeoutError(f"{url}{path} not ready within {timeout}s: {last}")


class Gateway:
    """The app under uvicorn in a background thread with its own event loop."""

    def __init__(self, policy: str | dict[str, Any], env: dict[str, str] | None = None,
                 tmp: Path | None = None) -> None:
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="gw-"))
        text = policy_text(policy)
        self.policy_path = self.tmp / "policy.yaml"
        self.policy_path.write_text(text)
        merged = {**os.environ, **(env or {})}
        self.policy = parse_policy(text, str(self.policy_path), merged)
        self.port = free_port()
        self._server: GatewayServer | None = None
        # The gateway's event loop, for a test that must call into the app on its own thread.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 120.0) -> Gateway:
        """Serve as `gateway serve` does (socket bound first, the gateway's HTTP protocol) and
        return once /health answers: after the lifespan, so local backends are up."""
        self.app = build_app(self.policy, policy_path=str(self.policy_path))
        sock = listen("127.0.0.1", self.port)
        config = build_config(self.app, self.policy.server, graceful_timeout_s=5,
                              loop="asyncio")
        server = self._server = GatewayServer(config, self.app)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(server, sock)),
                                        daemon=True, name="gateway")
        self._thread.start()
        wait_ready(self.url, timeout=timeout, alive=self._thread.is_alive)
        return self

    async def _serve(self, server: GatewayServer, sock: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        await server.serve([sock])

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess:
    """`python -m gateway serve` as a separate process (a replica)."""

    def __init__(self, policy: str | dict[str, Any], env: dict[str, str] | None = None,
                 tmp: Path | None = None, args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="gwp-"))
        self.args = args
        self.policy_path = self.tmp / f"policy-{free_port()}.yaml"
        self.policy_path.write_text(policy_text(policy))
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.tmp / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        proc = self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.policy_path),
             "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=self.tmp, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        try:
            wait_ready(self.url, timeout=timeout, alive=lambda: proc.poll() is None)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(
                f"gateway process failed to start:\n{self.log.read_text()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
