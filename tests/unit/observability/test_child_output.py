"""A supervised backend's output lines: their levels, the probes dropped, the relay."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import pytest

from gateway.observability.child_output import LineLevels, is_probe, relay, strip_level

D, I, W, E, C = (logging.DEBUG, logging.INFO, logging.WARNING,  # noqa: E741 (table)
                 logging.ERROR, logging.CRITICAL)


@pytest.mark.parametrize(("lines", "levels"), [
    # uvicorn, logging.basicConfig and vLLM formats name their level.
    (["INFO:     Started server process [7]"], [I]),
    (["WARNING local_backend: torch engine ignores --quantization"], [W]),
    (["ERROR 05-01 12:00:00 [engine.py:1] CUDA out of memory"], [E]),
    (["(APIServer pid=9) INFO 05-01 12:00:00 [api_server.py:1] Starting"], [I]),
    (["DEBUG:asyncio:Using selector", "CRITICAL: down"], [D, C]),
    # A traceback is one level, its last line included; the next plain line is not.
    (["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
      "ValueError: bad", "plain again"], [E, E, E, I]),
    # A logged error's indented continuation keeps its level.
    (["ERROR:root:failed", "    detail", "next"], [E, E, I]),
    (["local-backend: error: Model directory '/x' does not exist."], [E]),
    (["/venv/torch/module.py:1789: FutureWarning: `past_key_values` is deprecated",
      "  return forward_call(*args, **kwargs)"], [W, W]),
    (["Information is not a level", "WARNINGS are not either"], [I, I]),
])
def test_each_line_gets_the_level_it_states(lines: list[str], levels: list[int]) -> None:
    classify = LineLevels()
    assert [classify.level(line) for line in lines] == levels


@pytest.mark.parametrize(("line", "probe"), [
    ('INFO:     127.0.0.1:51234 - "GET /health HTTP/1.1" 200 OK', True),
    ('INFO:     127.0.0.1:51234 - "GET /metrics HTTP/1.1" 200 OK', True),
    ('127.0.0.1 - - [01/May/2026 12:00:00] "GET /health HTTP/1.0" 200 -', True),
    # A failing probe says something; so does every other request.
    ('INFO:     127.0.0.1:51234 - "GET /health HTTP/1.1" 503 Service Unavailable', False),
    ('INFO:     127.0.0.1:51234 - "POST /v1/chat/completions HTTP/1.1" 200 OK', False),
    ('INFO:     127.0.0.1:51234 - "GET /healthz HTTP/1.1" 200 OK', False),
])
def test_only_successful_probes_are_dropped(line: str, probe: bool) -> None:
    assert is_probe(line) is probe


def test_the_level_word_is_not_repeated_in_the_message() -> None:
    assert strip_level("INFO:     Started server") == "Started server"
    assert strip_level("WARNING local_backend: x") == "local_backend: x"
    assert strip_level("(APIServer pid=9) INFO 05-01 x") == "(APIServer pid=9) INFO 05-01 x"
    assert strip_level("plain") == "plain"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_relay_logs_each_line_with_the_backend_fields() -> None:
    logger = logging.getLogger("gateway.local_backend")
    handler = _Records()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    recent: deque[str] = deque(maxlen=2)

    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b'INFO:     Started\n\n'
                         b'INFO:     1.2.3.4:5 - "GET /health HTTP/1.1" 200 OK\n'
                         b"local-backend: error: no model \xff\n")
        reader.feed_eof()
        await relay(reader, {"backend": "local", "stream": "stderr"}, recent)

    try:
        asyncio.run(run())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    got = [(r.levelno, r.getMessage(), r.fields) for r in handler.records]  # type: ignore[attr-defined]
    fields = {"backend": "local", "stream": "stderr"}
    assert got == [(I, "Started", fields), (E, "local-backend: error: no model \ufffd", fields)]
    assert list(recent) == ["INFO:     Started", "local-backend: error: no model \ufffd"]
