"""A supervised process's stdout/stderr, line by line, re-emitted through `logging`.

The local backend (our torch server, or vLLM) writes plain text: its own log lines, uvicorn's,
the odd traceback. Relayed here, each line becomes one record on `gateway.local_backend` and so
comes out in the gateway's format (JSON by default) with the backend's name, at the level the
line itself states. Successful health probes and metric scrapes, which the gateway makes every
`router.health_check_interval_s`, are dropped: they would be most of the log.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import Any

log = logging.getLogger("gateway.local_backend")

# uvicorn ("INFO:     …"), logging.basicConfig ("INFO name: …") and vLLM
# ("INFO 05-01 12:00:00 [api_server.py:1] …", newer ones with a "(APIServer pid=1) " prefix).
_LEVEL = re.compile(r"(?:\([^)]*\)\s+)?(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b:?\s*")
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "WARN": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
# argparse and our CLIs: "local-backend: error: …".
_CLI_ERROR = re.compile(r"[\w.-]+: error: ")
# Python's warnings module: "/path/module.py:12: FutureWarning: …".
_PY_WARNING = re.compile(r"\S+:\d+: \w*Warning: ")
# The gateway's own probes, answered 200, as uvicorn's access log writes them.
_PROBE = re.compile(r'"(?:GET|HEAD) /(?:health|metrics)(?:\?\S*)? HTTP/[\d.]+" 200\b')

# A line longer than this is dropped (with a note) rather than buffered without bound.
LINE_LIMIT = 1 << 20


class LineLevels:
    """The level of each line of one stream. A line that names no level continues the one
    before it when it is indented or ends a traceback, so a traceback stays one level."""

    def __init__(self, default: int = logging.INFO) -> None:
        self._default = default
        self._last = default
        self._traceback = False

    def level(self, line: str) -> int:
        m = _LEVEL.match(line)
        if m:
            self._traceback = False
            self._last = _LEVELS[m[1]]
        elif line.startswith("Traceback (most recent call last)"):
            self._traceback = True
            self._last = logging.ERROR
        elif line[:1].isspace():
            pass
        elif self._traceback:  # "ValueError: …", the line that ends a traceback
            self._traceback = False
        elif _CLI_ERROR.match(line):
            self._last = logging.ERROR
        elif _PY_WARNING.match(line):
            self._last = logging.WARNING
        else:
            self._last = self._default
        return self._last


def is_probe(line: str) -> bool:
    return _PROBE.search(line) is not None


def strip_level(line: str) -> str:
    """`INFO:     Started server` -> `Started server` (the record carries the level)."""
    m = _LEVEL.match(line)
    return line[m.end():] if m and m.start(1) == 0 else line


async def relay(reader: asyncio.StreamReader, fields: dict[str, Any],
                recent: deque[str]) -> None:
    """Log each line of `reader` until EOF; keep the last few in `recent` (for errors)."""
    levels = LineLevels()
    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # asyncio dropped a line over the reader's limit
            log.warning("(a line over %d bytes was dropped)", LINE_LIMIT, extra={"fields": fields})
            continue
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip()
        if not line or is_probe(line):
            continue
        level = levels.level(line)
        recent.append(line)
        if log.isEnabledFor(level):
            log.log(level, "%s", strip_level(line), extra={"fields": fields})
