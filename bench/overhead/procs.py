"""Processes the benchmark starts: pinned to a core, logged to a file, polled until they answer,
measured (resident memory) and stopped — only ever the ones started here, by their own id."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# The system under test gets core 1; mocks, load generators and this orchestrator get core 0.
SUT_CPU = 1
LOAD_CPU = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_self(cpu: int = LOAD_CPU) -> None:
    """The orchestrator (and the in-process clients it runs) stay off the proxy's core."""
    os.sched_setaffinity(0, {cpu})


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields resume after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _tree(pid: int) -> list[int]:
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (a proxy that forks workers)."""
    total_kb = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024


def rss_split_mb(pid: int) -> dict[str, float]:
    """VmRSS's three parts over the process tree: anonymous memory (the heap, arenas), file
    pages mapped (libraries; the journal's segments) and shared memory (files on tmpfs)."""
    kb = {"anon_mb": 0, "file_mb": 0, "shmem_mb": 0}
    fields = {"RssAnon:": "anon_mb", "RssFile:": "file_mb", "RssShmem:": "shmem_mb"}
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    key = fields.get(line.split(maxsplit=1)[0]) if line.strip() else None
                    if key:
                        kb[key] += int(line.split()[1])
        except OSError:
            continue
    return {k: round(v / 1024, 1) for k, v in kb.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _all_ticks() -> dict[int, int]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = int(fields[11]) + int(fields[12])
    return out


class Background:
    """CPU used by processes this benchmark did not start, over a measurement: the machine is
    shared, and another process on the proxy's core shows up as proxy slowness."""

    def __init__(self) -> None:
        self._mine = set(_tree(os.getpid()))
        self._start = _all_ticks()
        self._t0 = time.monotonic()

    def cpu_pct(self) -> float:
        """Percent of one core (out of 100 × cores) used by everything else since start."""
        end = _all_ticks()
        mine = self._mine | set(_tree(os.getpid()))
        ticks = sum(t - self._start.get(pid, 0) for pid, t in end.items()
                    if pid not in mine and t >= self._start.get(pid, 0))
        wall = time.monotonic() - self._t0
        return 100 * ticks / os.sysconf("SC_CLK_TCK") / wall if wall > 0 else 0.0


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def rss_split_mb(self) -> dict[str, float]:
        return rss_split_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our own process group (it was started in a new session), then SIGKILL."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self.popen.wait(5)


class Procs:
    """Every process this run started; `stop_all` in a `finally`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], *, cpu: int,
              env: Mapping[str, str] | None = None, cwd: str | None = None) -> Proc:
        log = self.logdir / f"{name}.log"
        f = open(log, "wb")  # the child inherits it; our copy is closed below
        popen = subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=dict(env) if env is not None else None, cwd=cwd,
                                 start_new_session=True)
        f.close()
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            proc.stop()
        self.running.clear()


def _post(port: int, path: str, body: bytes, headers: Mapping[str, str],
          timeout: float) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


def post_once(port: int, path: str, body: bytes, headers: Mapping[str, str],
              timeout: float = 5.0) -> tuple[int, bytes]:
    status, reply, _ = _post(port, path, body, headers, timeout)
    return status, reply


def reply_header(port: int, path: str, body: bytes, headers: Mapping[str, str],
                 name: str) -> str | None:
    """One request's reply header `name` (None when absent)."""
    return _post(port, path, body, headers, 5.0)[2].get(name)


def wait_answering(proc: Proc, port: int, path: str, body: bytes,
                   headers: Mapping[str, str], timeout: float) -> bytes:
    """Poll with a real request until it gets 200, the process dies, or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n"
                               f"{proc.log_tail()}")
        try:
            status, reply = post_once(port, path, body, headers)
            if status == 200:
                return reply
            last = f"HTTP {status}: {reply[:300]!r}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} did not answer 200 on :{port}{path} within {timeout:g} s "
                       f"(last: {last})\n{proc.log_tail()}")
