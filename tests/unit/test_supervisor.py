"""Start-up of managed local backends with small stand-in processes (a real child process each,
run through the real supervisor): wait for /health, fail fast, give up at the deadline or on a
signal, and relay the child's output into the gateway's log."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from gateway.policy.load import parse_policy
from gateway.policy.models import LocalProvider, Policy
from gateway.supervisor import BackendStartError, LocalBackends
from tests.fakes.base import wait_until

# Answers /health like a backend that finished loading, after saying a few things.
HEALTHY = """
import http.server, sys
port = int(sys.argv[1])
print("INFO:     loading weights", flush=True)
print("WARNING local_backend: torch engine ignores --quantization", file=sys.stderr, flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""
SLEEPER = "import time; print('INFO:     loading a huge model', flush=True); time.sleep(120)"
FAILS = "import sys; print('local-backend: error: no such model', file=sys.stderr); sys.exit(4)"


def _policy(start_timeout_s: float = 60) -> Policy:
    return parse_policy(f"""
providers:
  local: {{kind: local, model: m, start_timeout_s: {start_timeout_s}}}
models:
  chat: {{deployments: [{{provider: local, model: m}}]}}
""", "p.yaml", {})


def _script(code: str) -> Callable[[LocalProvider, int], list[str]]:
    def command(cfg: LocalProvider, port: int) -> list[str]:
        return [sys.executable, "-c", code, str(port)]
    return command


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def backend_log() -> Iterator[_Records]:
    logger = logging.getLogger("gateway.local_backend")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_wait_ready_returns_once_health_answers_and_relays_output(backend_log) -> None:
    async def run() -> None:
        backends = LocalBackends(_policy(), command_line=_script(HEALTHY))
        await backends.start()
        await backends.wait_ready()
        assert backends.starting() == frozenset()
        await backends.stop()

    asyncio.run(run())
    got = {(r.levelno, r.getMessage(), r.fields["stream"])  # type: ignore[attr-defined]
           for r in backend_log.records}
    assert got >= {(logging.INFO, "loading weights", "stdout"),
                   (logging.WARNING, "local_backend: torch engine ignores --quantization",
                    "stderr")}
    # The supervisor's own health polls, answered 200, never reach the log.
    assert not [r for r in backend_log.records if "/health" in r.getMessage()]


def test_a_backend_that_exits_before_ready_fails_start_up_without_restarting() -> None:
    async def run() -> LocalBackends:
        backends = LocalBackends(_policy(), command_line=_script(FAILS))
        await backends.start()
        with pytest.raises(BackendStartError) as e:
            await backends.wait_ready()
        assert "exited with code 4 before it answered /health" in str(e.value)
        assert "local-backend: error: no such model" in str(e.value)
        return backends

    backends = asyncio.run(run())
    assert backends.start_error is not None and "code 4" in backends.start_error


def test_a_backend_past_its_start_timeout_is_stopped_and_named() -> None:
    pids: list[int] = []

    async def run() -> None:
        backends = LocalBackends(_policy(start_timeout_s=0.5), command_line=_script(SLEEPER))
        await backends.start()
        noting = asyncio.ensure_future(_note_pid(backends, pids))
        with pytest.raises(BackendStartError) as e:
            await backends.wait_ready()
        assert ("local backend 'local' did not answer /health within 0.5 s "
                "(providers.local.start_timeout_s)") in str(e.value)
        await noting

    asyncio.run(run())
    assert pids and wait_until(lambda: _gone(pids[0]), timeout=10)


def test_interrupt_gives_up_waiting_and_stops_the_backends() -> None:
    pids: list[int] = []

    async def run() -> None:
        backends = LocalBackends(_policy(), command_line=_script(SLEEPER))
        await backends.start()

        async def signal_once_running() -> None:
            await _note_pid(backends, pids)
            # As GatewayServer.handle_exit does: from outside the loop.
            threading.Thread(target=backends.interrupt).start()

        signalling = asyncio.ensure_future(signal_once_running())
        with pytest.raises(BackendStartError, match="interrupted by a signal"):
            await backends.wait_ready()
        await signalling

    asyncio.run(run())
    assert pids and wait_until(lambda: _gone(pids[0]), timeout=10)


async def _note_pid(backends: LocalBackends, pids: list[int]) -> None:
    """Note the backend's pid as soon as its process exists."""
    while (pid := backends.pid("local")) is None:  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(0.01)
    pids.append(pid)
