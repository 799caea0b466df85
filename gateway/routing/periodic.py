"""The background loops of routing (load-signal scrapes, the shared view's exchange): one step
every interval, measured from the step's start, and a bug in a step logged rather than ending
the loop for the life of the process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any


async def every(interval_s: float, clock: Callable[[], float],
                step: Callable[[], Awaitable[Any]], log: logging.Logger, what: str) -> None:
    while True:
        started = clock()
        try:
            await step()
        except Exception:  # a bug here must not end the loop for the process's life
            log.exception("%s failed", what)
        await asyncio.sleep(max(0.0, interval_s - (clock() - started)))


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a loop's task and wait until it has ended."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
