"""Sample a proxy under load with py-spy and say where its CPU goes.

py-spy runs on the load core with `--nonblocking` (it reads the target's memory without
stopping it, so the proxy runs at full speed while sampled). It writes collapsed stacks
(`frame;frame;… count`), which `summarize` folds into self time per function, inclusive time
per gateway function, and time per library ("area")."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.overhead.procs import LOAD_CPU

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Path fragment -> area, first match wins (checked against the frame's file).
AREAS = (
    ("/gateway/", "gateway"),
    ("/uvicorn/protocols/", "uvicorn protocol"),
    ("/uvicorn/", "uvicorn"),
    ("/starlette/", "starlette"),
    ("/aiohttp/", "aiohttp"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpcore"),
    ("/anyio/", "anyio"),
    ("/json/", "json"),
    ("/asyncio/", "asyncio"),
    ("/uvloop/", "uvloop"),
    ("/prometheus_client/", "prometheus_client"),
    ("/opentelemetry/", "opentelemetry"),
    ("/sqlite3/", "sqlite3"),
    ("/redis/", "redis"),
    ("/logging/", "logging"),
    ("/pydantic", "pydantic"),
    ("/litellm/", "litellm"),
    ("/fastapi/", "fastapi"),
)


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(__file__).resolve().parents[2] / ".venv/bin/py-spy")
    if not Path(exe).exists():
        raise FileNotFoundError("py-spy not found: .venv/bin/pip install py-spy")
    return exe


def start(pid: int, seconds: float, out: Path, *, rate: int = 250,
          fmt: str = "raw") -> subprocess.Popen[bytes]:
    """py-spy record for `seconds` in the background (subprocesses included)."""
    argv = ["taskset", "-c", str(LOAD_CPU), py_spy(), "record", "--pid", str(pid),
            "--duration", str(max(1, round(seconds))), "--rate", str(rate), "--format", fmt,
            "--output", str(out), "--nonblocking", "--threads"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        _, err = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")


def _area(func: str, file: str) -> str:
    if func == "Runner.run" and file.endswith("asyncio/runners.py"):
        # uvloop's loop is C: time in it (I/O, syscalls, C callbacks) lands on the last Python
        # frame below it.
        return "event loop (uvloop C code, syscalls)"
    path = "/" + file
    for frag, name in AREAS:
        if frag in path:
            return name
    return "other: " + (file.rsplit("/", 1)[-1] or "?")


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def parse(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """Collapsed stacks as [([(func, file), …root→leaf], samples)]."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw)
            frames.append((m["func"], m["file"]) if m else (raw, ""))
        out.append((frames, int(count)))
    return out


def summarize(raw: Path, top: int = 20) -> dict[str, Any]:
    stacks = parse(raw.read_text(errors="replace"))
    total = sum(n for _, n in stacks) or 1
    self_fn: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    incl_gw: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        # py-spy's first frames name the process and (--threads) the thread.
        if frames[0][0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0][0].startswith("thread "):
            threads[frames[0][0]] += n
            frames = frames[1:]
        if not frames:
            continue
        func, file = frames[-1]
        self_fn[f"{func} ({_short(file)})"] += n
        self_area[_area(func, file)] += n
        seen = set()
        for f, fl in frames:
            if ("/" + fl).find("/gateway/") >= 0:
                key = f"{f} ({_short(fl)})"
                if key not in seen:
                    seen.add(key)
                    incl_gw[key] += n

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)]

    return {"samples": total, "self_by_function_pct": share(self_fn),
            "self_by_area_pct": share(self_area), "gateway_inclusive_pct": share(incl_gw),
            "threads_pct": share(threads)}
