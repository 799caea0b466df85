"""`gateway serve` as a process with a managed local backend: a busy port fails before anything
starts, requests sent while the model loads wait and are served (no 503s), a backend that cannot
start fails start-up with its reason, and the whole log — the backend's lines included — is
JSON without the health-probe access lines."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from local_backend.tiny import make_tiny_model
from tests.fakes.base import free_port
from tests.integration.conftest import simple_policy

CHAT = {"model": "chat", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _policy(tmp: Path, model: str) -> Path:
    path = tmp / "policy.yaml"
    # No embedding model: the backend is up in a few seconds.
    path.write_text(yaml.safe_dump(simple_policy(
        tmp, {"local": {"kind": "local", "model": model, "engine": "torch",
                        "embedding_model": "none",
                        "timeouts": {"connect": 2, "first_byte": 60, "total": 120}}},
        {"chat": {"deployments": [{"provider": "local", "model": model}]}},
        router={"health_check_interval_s": 0.5})))
    return path


def _serve(policy: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = policy.parent / f"serve-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(policy),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=policy.parent, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    return proc, log


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log; each must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _connect_when_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def test_a_busy_port_fails_at_once_before_any_backend_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc, log = _serve(_policy(tmp_path, "tiny-random"), port)
        assert proc.wait(60) == 1
    lines = log.read_text().splitlines()
    assert lines == [f"gateway: cannot listen on 127.0.0.1:{port}: the port is already in use "
                     "(another gateway or program holds it). Stop that process, or pick a free "
                     "port with --port or server.port."]


def test_requests_sent_while_the_backend_loads_wait_and_are_served(tmp_path: Path,
                                                                   tiny_dir: Path) -> None:
    port = free_port()
    proc, log = _serve(_policy(tmp_path, str(tiny_dir)), port)
    try:
        # The port listens from the start; the model is still loading.
        _connect_when_listening(port)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    records = _json_lines(log.read_text())
    msgs = [x["msg"] for x in records]

    def first(prefix: str) -> int:
        return next(i for i, m in enumerate(msgs) if m.startswith(prefix))

    assert first("local backend local is ready") < first("gateway ready")
    relayed = [x for x in records if x["logger"] == "gateway.local_backend"]
    assert relayed and all(x["backend"] == "local" for x in relayed)
    assert any("serving" in x["msg"] and "torch engine" in x["msg"] for x in relayed)
    # The supervisor's and the signal collector's /health polls leave no access lines.
    assert not [m for m in msgs if "GET /health" in m or "GET /metrics" in m]
    # SIGTERM stopped the backend with the gateway.
    assert f"Finished server process [{relayed[0]['pid']}]" in msgs


def test_a_backend_that_cannot_start_fails_start_up_with_its_reason(tmp_path: Path) -> None:
    proc, log = _serve(_policy(tmp_path, str(tmp_path / "no-such-model")), free_port())
    assert proc.wait(120) == 3
    *records, last = log.read_text().splitlines()
    assert last.startswith("gateway: start-up failed: local backend 'local' exited with code 2 "
                           "before it answered /health. Its last output: \"local-backend: "
                           "error: Model directory")
    lines = _json_lines("\n".join(records))
    assert not [x for x in lines if "Traceback" in x["msg"] or "exc" in x]
    assert not [x for x in lines if x["msg"].startswith("gateway ready")]
