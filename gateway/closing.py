"""How a request ends: its record is settled exactly once, whichever way the request went.

Every path out of the proxy — a reply, a refusal, a stream's last event, a client gone, an
unexpected exception, a shutdown — ends in `Closer.close` or `Closer.close_now`:
- the record is priced and journaled *before* the response's last byte (`Settler.seal`), so a
  process killed after answering cannot lose it;
- the rest — the limiter's reservation settled to actual usage (released at once, whatever
  happened), the ledger queue, the trace span, the request log line — runs after the
  response is written, where the client never waits on it: as a callback when nothing in it
  awaits (open mode, in-memory limits), else as a task (Redis limits).
`record.closed` makes a second close a no-op, so the paths need not know about each other.
The Closer also owns the tasks it starts and the shutdown drain's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from gateway.accounting.records import RequestRecord
from gateway.limits.base import Reservation
from gateway.observability.tracing import RequestSpan

if TYPE_CHECKING:
    from gateway.runtime import Deps



class Closer:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set when shutdown begins; requests then still running end with `gateway_shutdown`.
        self.draining = False
        # The tasks of the requests running now: cancelled when the shutdown deadline nears,
        # and each, seeing `draining`, ends its request with `gateway_shutdown`.
        self.running: set[asyncio.Task[Any]] = set()

    async def close(self, reservation: Reservation | None, record: RequestRecord,
                    span: RequestSpan | None, completion_text: str | None = None) -> None:
        """Close the record before the response completes. Awaits only when usage must be
        estimated (a provider that reported none), and then shielded: a cancellation of the
        caller cannot leave the record half-settled."""
        if not _claim(record):
            return
        settler = self.deps.settler
        if not settler.needs_estimate(record):
            self._journal_and_finish(reservation, record, span)
            return
        task = self._start(self._estimate_then_close(reservation, record, span, completion_text))
        await asyncio.shield(task)

    def close_now(self, reservation: Reservation | None, record: RequestRecord,
                  span: RequestSpan | None) -> None:
        """The same, for paths that cannot await (a `finally`, a cancelled task)."""
        if not _claim(record):
            return
        if self.deps.settler.needs_estimate(record):
            self._start(self._estimate_then_close(reservation, record, span, None))
        else:
            self._journal_and_finish(reservation, record, span)

    async def _estimate_then_close(self, reservation: Reservation | None, record: RequestRecord,
                                   span: RequestSpan | None, text: str | None) -> None:
        await self.deps.settler.estimate(reservation, record, record.request_body, text)
        self._journal_and_finish(reservation, record, span)

    def _journal_and_finish(self, reservation: Reservation | None, record: RequestRecord,
                            span: RequestSpan | None) -> None:
        settler = self.deps.settler
        settler.seal(record)
        if settler.finishes_now(reservation):
            # Nothing left to await (open mode, limits in memory): a callback after this tick
            # — after the response is written, as a task's first step would be — costs a
            # tenth of a task. `drain` lets pending ones run before shutdown goes on.
            asyncio.get_running_loop().call_soon(self._finish_now, reservation, record, span)
        else:
            self._start(self._finish(reservation, record, span))

    async def _finish(self, reservation: Reservation | None, record: RequestRecord,
                      span: RequestSpan | None) -> None:
        await self.deps.settler.finish(reservation, record)
        self._finished(record, span)

    def _finish_now(self, reservation: Reservation | None, record: RequestRecord,
                    span: RequestSpan | None) -> None:
        self.deps.settler.finish_now(reservation, record)
        self._finished(record, span)

    def _finished(self, record: RequestRecord, span: RequestSpan | None) -> None:
        """After settlement: rollout observation, the trace span, the request log line."""
        if record.rollout_arm is not None and self.deps.rollouts is not None:
            self.deps.rollouts.observe(record)  # after pricing: the cost gate reads it
        if span is not None:
            # After settlement: the span carries the settled usage (estimates) and cost.
            span.finish(record)
        request_log = self.deps.request_log
        if request_log.enabled() and self.deps.runtime().policy.observability.log_requests:
            request_log.emit(record)

    # ---- tasks and shutdown ------------------------------------------------------------------

    def _start(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn(self, coro: Awaitable[None]) -> None:
        self._start(coro)

    def begin_drain(self, grace_s: float) -> None:
        """Shutdown began: from now on a request cut short says so. Streams still running
        shortly before the grace period ends are ended with an error event (rather than cut
        by the server), so clients can tell and retry."""
        if self.draining:
            return
        self.draining = True
        margin = min(1.0, grace_s / 4)
        asyncio.get_running_loop().call_later(max(grace_s - margin, 0.0), self._end_streams)

    def _end_streams(self) -> None:
        for task in list(self.running):
            task.cancel()

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for settlements and drains still running (shutdown)."""
        await asyncio.sleep(0)  # settlement callbacks already scheduled run first
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _claim(record: RequestRecord) -> bool:
    """Mark the record closed, once: False when it already was. Runs its `on_close` hook (a
    flow-control slot's release) the first time, whichever close path gets there first."""
    if record.closed:
        return False
    record.closed = True
    if record.on_close is not None:
        record.on_close()
    return True
