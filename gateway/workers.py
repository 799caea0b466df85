"""`gateway serve --workers N`: N processes serving one port, each on its own core.

The parent binds the port (`server.listen`: a busy port is one clear error), then starts N
workers the way uvicorn's own `--workers` does — multiprocessing's spawn (a fresh interpreter
each) with the listening socket handed over — and each worker runs exactly what a single
`gateway serve` runs on it (`server.run_policy`): its own app, upstream pools, ledger writer
and journal. The kernel gives each new connection to whichever worker accepts it first;
nothing balances by hand. The parent only watches: a worker that dies is started again (with
a backoff), SIGTERM/SIGINT stop every worker gracefully, and a worker that fails during
start-up (exit 2 or 3: the policy, a local backend, the database) stops the whole server,
since its replacement would fail the same way.

What must be exact across workers lives outside them. Limits, budgets and key revocations
need Redis (`state.redis_url`): the in-memory limiter counts per process, so N workers would
each allow the whole limit, and `serve` refuses `--workers > 1` without it (`refusal`). The
ledger takes concurrent writers: SQLite in WAL mode with a busy timeout (a batch that still
cannot get the lock goes to the spill file and is replayed), or PostgreSQL. Each worker's
journal segments are its own, held with `flock` while it lives; a worker killed with
`kill -9` leaves them unlocked, and its replacement ships them at start-up (journal.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.policy.models import LocalProvider, Policy

log = logging.getLogger("gateway.workers")

# Exit codes of `serve` that mean the start-up itself is broken (2: the policy, 3: the
# lifespan): every replacement would fail the same way.
_STARTUP_FAILURES = frozenset({2, 3})
# A slot whose worker keeps dying is restarted at most this often (seconds, doubling to 30).
_BACKOFF_S = 0.5
_BACKOFF_MAX_S = 30.0


def refusal(workers: int, policy: Policy) -> str | None:
    """Why this policy cannot be served by `workers` processes; None when it can."""
    if workers <= 1:
        return None
    local = sorted(n for n, p in policy.providers.items() if isinstance(p, LocalProvider))
    if local:
        # Each worker's lifespan starts the providers it manages: N model servers, N × memory.
        return (f"gateway: --workers {workers} cannot manage `kind: local` providers "
                f"({', '.join(local)}): every worker would start its own model server. Run "
                "`local-backend` as its own process and point a `kind: vllm` provider at it "
                "(docs/local_backend.md), or serve with one worker.")
    if policy.state.redis_url:
        return None
    return (f"gateway: --workers {workers} needs shared state: without state.redis_url, rate "
            "limits, concurrency, budgets and key revocations are counted in each process's "
            f"memory, so {workers} workers would each allow the whole limit. Set "
            "state.redis_url (docs/operations.md, \"Several workers on one machine\"), or "
            "run one worker per container.")


@dataclass(frozen=True)
class WorkerArgs:
    """What each worker needs to run `serve` itself (pickled to it)."""

    policy_path: str
    log_level: str
    graceful_timeout_s: float


def _worker(args: WorkerArgs, sock: socket.socket) -> None:
    _die_with_parent()
    from gateway.policy.load import PolicyError, load_policy
    from gateway.server import run_policy

    try:
        policy = load_policy(args.policy_path)
    except PolicyError as e:  # the file changed since the parent read it
        print(e, file=sys.stderr)
        sys.exit(2)
    sys.exit(run_policy(policy, args.policy_path, sock, log_level=args.log_level,
                        graceful_timeout_s=args.graceful_timeout_s))


def _die_with_parent() -> None:
    """A worker whose supervisor was killed (`kill -9`) stops too, instead of serving on."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


@dataclass
class _Slot:
    proc: BaseProcess
    started: float
    backoff: float = _BACKOFF_S
    due: float = 0.0  # when a dead worker's replacement may start


class Supervisor:
    def __init__(self, workers: int, sock: socket.socket, args: WorkerArgs) -> None:
        self.n = workers
        self.sock = sock
        self.args = args
        self._ctx = multiprocessing.get_context("spawn")
        # The listening socket goes to each worker by fd passing, as uvicorn's workers get it.
        multiprocessing.allow_connection_pickling()
        self._stop = threading.Event()
        self._slots: list[_Slot] = []
        self.exit_code = 0

    def _start(self, i: int) -> BaseProcess:
        proc = self._ctx.Process(target=_worker, args=(self.args, self.sock),
                                 name=f"gateway-worker-{i}", daemon=False)
        proc.start()
        log.info("worker %d started (pid %s)", i, proc.pid)
        return proc

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stop.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._slots = [_Slot(self._start(i), time.monotonic()) for i in range(self.n)]
        print(f"gateway: {self.n} workers serving on "
              f"{_where(self.sock)} (supervisor pid {os.getpid()})", file=sys.stderr)
        while not self._stop.wait(0.2):
            self._watch()
        self._stop_all()
        return self.exit_code

    def _watch(self) -> None:
        now = time.monotonic()
        for i, slot in enumerate(self._slots):
            proc = slot.proc
            if proc.is_alive():
                if now - slot.started > 60:
                    slot.backoff = _BACKOFF_S  # it served a while: a new death starts afresh
                continue
            if slot.due == 0.0:
                code = proc.exitcode
                proc.join()
                if code in _STARTUP_FAILURES and now - slot.started < 600:
                    print(f"gateway: worker {i} failed to start (exit {code}); stopping.",
                          file=sys.stderr)
                    self.exit_code = int(code or 1)
                    self._stop.set()
                    return
                log.warning("worker %d (pid %s) exited with %s; starting another in %.1f s",
                            i, proc.pid, code, slot.backoff)
                slot.due = now + slot.backoff
                slot.backoff = min(slot.backoff * 2, _BACKOFF_MAX_S)
            elif now >= slot.due:
                slot.proc, slot.started, slot.due = self._start(i), now, 0.0

    def _stop_all(self) -> None:
        """SIGTERM to every worker (uvicorn's graceful shutdown), SIGKILL past the grace."""
        procs = [s.proc for s in self._slots if s.proc.is_alive()]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + self.args.graceful_timeout_s + 5
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def run_workers(workers: int, sock: socket.socket, args: WorkerArgs) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; the exit code."""
    return Supervisor(workers, sock, args).run()
