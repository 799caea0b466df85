"""Runs one request's stages at each point of the request path (see `base.py` for the seam).

The proxy makes one `RequestStages` per request only when the runtime has stages (`if
rt.stages:`), so an unconfigured gateway does none of this. Ordering, header merging and the
blocked-stream ending live here, so the proxy and the stream pump each make one call per point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.call import Call, Principal
from gateway.stages import answer as answers
from gateway.stages.base import (
    Answer,
    Blocked,
    ReplyInfo,
    Stage,
    StageContext,
    StageRun,
    StreamWatch,
    Wire,
)

if TYPE_CHECKING:
    from gateway.accounting.records import RequestRecord
    from gateway.closing import Closer
    from gateway.limits.base import Reservation
    from gateway.observability.tracing import RequestSpan
    from gateway.providers.base import StreamTranslator, Target
    from gateway.responses import RawResponse
    from gateway.runtime import Runtime


def ordered(stages: Sequence[Stage]) -> tuple[Stage, ...]:
    """The runtime's stages in run order (stable for equal orders: policy order)."""
    return tuple(sorted(stages, key=lambda s: s.order))


def begin(rt: Runtime, call: Call, principal: Principal,
          record: RequestRecord) -> RequestStages | None:
    """The stages that apply to this request, or None when none does (and none left a
    response header: a stage that stands aside may still say so, `x-gateway-cache: bypass`)."""
    policy = rt.policy
    ctx = StageContext(call, principal, record, policy.models[call.model], policy, call.headers)
    runs = []
    for s in rt.stages:
        run = s.begin(ctx)
        if run is not None:
            runs.append((s.name, run))
    return RequestStages(ctx, runs) if runs or ctx.response_headers else None


class RequestStages:
    def __init__(self, ctx: StageContext, runs: list[tuple[str, StageRun]]) -> None:
        self.ctx = ctx
        self.runs = runs
        self._mark: Callable[[], None] | None = None
        # Whether any run checks attempts: the proxy skips `attempt` when none does.
        self.attempting = False
        for _name, run in runs:
            if run.checks_attempts:
                self.attempting = True
                break

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the stages added (sent on every outcome)."""
        return self.ctx.response_headers

    def _blocked(self, e: Blocked) -> Blocked:
        e.headers.update(self.ctx.response_headers)
        return e

    async def before(self, closer: Closer, reservation: Reservation | None, codec: Any,
                     t0: float, span: RequestSpan,
                     mark: Callable[[], None] | None = None) -> RawResponse | None:
        """Run every stage's `before`; an `Answer` is replied here (and its record closed).

        ``mark`` journals the admission marker (`Settler.admitted`). It runs before the first
        `before` that may suspend (I/O: a Redis lookup, a guard's classifier call) and, at
        the latest, before this returns None (the request goes upstream). A hit answered
        without suspending (a memory-cache lookup) never needs it: its final record is
        journaled in this same loop turn, before the reply's first byte — and a marker is
        only written at the end of the turn it was made in (journal.py), so one made for
        such a hit was never written anyway: the final record replaced it in the buffer."""
        self._mark = mark
        for _name, run in self.runs:
            if not run.never_suspends:
                self.mark()
            try:
                answer = await run.before()
            except Blocked as e:
                raise self._blocked(e) from None
            if answer is not None:
                return await answers.reply_with(self, answer, closer, reservation, codec, t0,
                                                span)
        self.mark()
        return None

    def mark(self) -> None:
        """Journal the admission marker now, if it is not yet (see `before`)."""
        mark, self._mark = self._mark, None
        if mark is not None:
            mark()

    async def attempt(self, target: Target) -> None:
        for _name, run in self.runs:
            if not run.checks_attempts:
                continue
            try:
                await run.attempt(target)
            except Blocked as e:
                raise self._blocked(e) from None

    def info(self, target: Target, native: bool,
             translator: StreamTranslator | None = None) -> ReplyInfo:
        call = self.ctx.call
        wire: Wire = call.ingress if native else "openai"
        last = self.ctx.record.attempts[-1] if self.ctx.record.attempts else None
        return ReplyInfo(target, wire, call.endpoint, last.usage if last is not None else None,
                         translator)

    async def reply(self, body: bytes, target: Target, native: bool) -> bytes:
        info = self.info(target, native)
        for _name, run in self.runs:
            if not run.checks_replies:
                continue
            try:
                body = await run.reply(body, info)
            except Blocked as e:
                raise self._blocked(e) from None
        return body

    def stream(self, target: Target, native: bool,
               translator: StreamTranslator) -> StreamWatch | None:
        info = self.info(target, native, translator)
        watches = [w for _n, r in self.runs
                   if r.checks_replies and (w := r.stream(info)) is not None]
        if not watches:
            return None
        if len(watches) == 1:
            return watches[0]
        return _Chain(watches)


class _Chain:
    """Several watchers, each fed what the one before let through."""

    def __init__(self, watches: list[StreamWatch]) -> None:
        self.watches = watches

    async def feed(self, chunk: bytes) -> bytes:
        for i, w in enumerate(self.watches):
            try:
                chunk = await w.feed(chunk)
            except Blocked as e:
                # What the blocking watcher let through still passes the ones after it.
                for later in self.watches[i + 1:]:
                    e.release = await later.feed(e.release) if e.release else b""
                raise
        return chunk

    async def finish(self) -> None:
        for w in self.watches:
            await w.finish()


def content_filter_chunk(call: Call) -> bytes:
    """The OpenAI chat chunk that ends a blocked stream (`finish_reason: content_filter`)."""
    obj = {"id": f"chatcmpl-{call.request_id}", "object": "chat.completion.chunk",
           "created": int(time.time()), "model": call.model,
           "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


__all__ = ["Answer", "RequestStages", "begin", "content_filter_chunk", "ordered"]
