"""Settlements batched: the settle.lua calls of every request that ended within a few
milliseconds go to Redis as one pipelined round trip.

A request's settlement is already off its path (the Closer runs it in a task the client never
waits on), but one EVALSHA per request still cost a full redis-py round trip of CPU — pool
checkout, a write, a read, a wake-up — on the event loop that serves the requests: with Redis
limits the gateway made two round trips per request (admit, settle). Batched, a request costs
its admission's round trip plus a share of one pipeline.

`SettleBatcher.call` queues one script call and waits for its reply, so a caller that awaits
it sees Redis settled, as with a plain EVALSHA. Queued calls leave by whichever comes first:
- the next admission (`submit`): they ride in its round trip, ahead of it, so they are
  applied before it is checked. Under steady traffic this is how settlements travel, and a
  request costs at most one round trip: its admission's;
- the timer: the first call of a batch starts a task that sleeps `window_s`, then sends what
  is still queued as one pipeline (quiet periods, the last requests before a pause).
Admissions made in the same turn of the event loop (requests whose bytes arrived together,
which under load is most of them) share one pipeline too: an admission leaves at the end of the
turn it was made in, so it never waits for another, and alone it is one plain EVALSHA. A
redis-py round trip costs ~45 µs of the loop's CPU alone and ~17 µs per call in a pipeline of 8.
Pipelines are non-transactional: each script stays atomic on its own, and they need not be
atomic together. A settlement reaches Redis at most `window_s` plus one round trip after the
request ended — the documented cost (docs/tenants.md): a concurrency slot and a budget hold are
freed that much later, a refund of unused tokens arrives that much later. Nothing is ever
freed early, so no limit is looser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

# 5 ms: at a few hundred requests per second and more, tens of settlements share one round
# trip; next to the seconds an LLM request holds its slot, freeing it 5 ms later is noise.
DEFAULT_WINDOW_S = 0.005
DEFAULT_MAX_BATCH = 256


class Script(Protocol):
    """A Lua script: its source, the SHA it is called by (updated after a load), and a plain
    EVALSHA of it."""

    source: str
    sha: str

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any: ...


_Call = tuple[Script, Sequence[str], Sequence[str | int], "asyncio.Future[Any]"]


class SettleBatcher:
    """Queues one Lua script's calls (settle.lua) and sends them pipelined: with the next
    `submit` call (an admission), or by the timer."""

    def __init__(self, client: aioredis.Redis, script: Script, *,
                 window_s: float = DEFAULT_WINDOW_S,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._client = client
        self._script = script
        self.window_s = window_s
        self._max = max_batch
        self._queue: list[_Call] = []
        self._turn: list[_Call] = []  # the calls submitted in this turn of the event loop
        self._sending: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        # What the timer task waits on: set by the window's timer, or at once by close().
        self._wake: asyncio.Future[None] | None = None
        self.round_trips = 0
        """Pipelines sent, admissions carrying settlements included (a NOSCRIPT retry counts as
        one more)."""

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """The script's reply for these keys and args, once their batch has run. Raises what
        the call raised (a Redis error of its own or of the whole pipeline)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((self._script, keys, args, fut))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        # Shielded: a caller cancelled while waiting leaves its call in the batch, which is
        # what a settlement must do (the request ended; its slot must still be freed).
        return await asyncio.shield(fut)

    def submit(self, script: Script, keys: Sequence[str],
               args: Sequence[str | int]) -> asyncio.Future[Any]:
        """The future of `script`'s reply for these keys and args, sent at the end of this turn
        of the event loop in one round trip with (and after) the calls queued by then and the
        other calls submitted in the turn. It runs whether or not anyone awaits the future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._turn.append((script, keys, args, fut))
        if len(self._turn) == 1:
            loop.call_soon(self._end_turn)
        return fut

    def _end_turn(self) -> None:
        turn, self._turn = self._turn, []
        room = max(self._max - len(turn), 0)
        batch, self._queue = [*self._queue[:room], *turn], self._queue[room:]
        for i in range(0, len(batch), self._max):
            part = batch[i:i + self._max]
            task = asyncio.ensure_future(self._alone(part[0]) if len(part) == 1
                                         else self._send(part))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Send what is queued now, without waiting out the window, and wait for it."""
        self.window_s = 0.0
        if self._wake is not None:
            _wake_up(self._wake)
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._sending:
            await asyncio.shield(asyncio.gather(*self._sending, return_exceptions=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                # Gather the settlements of the window (unless an admission takes them).
                wake = self._wake = loop.create_future()
                timer = loop.call_later(self.window_s, _wake_up, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
                batch, self._queue = self._queue, []
                for i in range(0, len(batch), self._max):
                    await self._send(batch[i:i + self._max])
        finally:
            self._task = self._wake = None

    async def _alone(self, call: _Call) -> None:
        """An admission with nothing to carry: one EVALSHA, without a pipeline's own cost."""
        script, keys, args, fut = call
        try:
            reply = await script(keys, args)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
            return
        except BaseException:
            fut.cancel()
            raise
        if not fut.done():
            fut.set_result(reply)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._pipeline(batch)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # Redis lost the script (restart, SCRIPT FLUSH): those calls did not run;
                # load each script once and send just them again.
                for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                    script.sha = await self._client.script_load(script.source)
                again = await self._pipeline([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    replies[i] = r
        except Exception as e:  # the whole pipeline failed: every caller is told
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        except BaseException:
            for *_, fut in batch:
                fut.cancel()
            raise
        for (*_, fut), reply in zip(batch, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        self.round_trips += 1
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


def _wake_up(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)
