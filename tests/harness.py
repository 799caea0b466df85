"""Run the real gateway on a free loopback port: in a thread (one process) or as a subprocess
(replicas)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from gateway.app import build_app
from gateway.policy.load import parse_policy
from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parent.parent


def policy_text(policy: str | dict[str, Any]) -> str:
    return policy if isinstance(policy, str) else yaml.safe_dump(policy, sort_keys=False)


def wait_ready(url: str, timeout: float = 20.0, path: str = "/health") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.02)
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
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> Gateway:
        self.app = build_app(self.policy, policy_path=str(self.policy_path))
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                loop="asyncio", lifespan="on", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()),
                                        daemon=True, name="gateway")
        self._thread.start()
        wait_ready(self.url)
        return self

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
                 tmp: Path | None = None) -> None:
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="gwp-"))
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

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.policy_path),
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.tmp, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        try:
            wait_ready(self.url, timeout=30)
        except TimeoutError:
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
