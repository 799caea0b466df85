"""Output checks on a stream that are not text patterns: a length cap and a classifier.

Both take whole SSE events in (what the sliding window, if any, let through) and return what
may go to the client now, so each sees exactly the text the client would get.

- `LengthCap` holds nothing back. It counts the reply's text as it passes; the event that
  crosses the cap is cut to the cap, released, and the stream ends (`block`), or the guard is
  flagged once and the stream goes on (`flag`).
- `SegmentCheck` holds back one *segment* of text (`segment_chars`): when it is complete — or
  the text ends (`finish_reason`, `message_delta`, `[DONE]`…) — the classifier is asked about
  it, with the last quarter of the segment before for context (a phrase across the boundary
  is seen whole), and only then is the segment released. So nothing the classifier has not
  passed reaches the client, and the client waits for a segment's worth of text plus one
  classifier call per segment, never for the whole answer. An unsafe segment (`block`) or a
  classifier with no verdict under `fail_closed` ends the stream there; `flag` and
  `fail_open` release it and go on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.guards.model_check import ask
from gateway.guards.refusal import TOO_LONG
from gateway.guards.verdicts import VerdictClock
from gateway.guards.window import StreamBlocked, ends_text, parse_event, set_text, split_events

if TYPE_CHECKING:
    from gateway.accounting.records import RequestRecord
    from gateway.guards.compiled import CompiledGuard
    from gateway.runtime import Runtime

# Characters per token where tokens must be counted before the upstream reports them (the
# same rule as admission's prompt estimate).
CHARS_PER_TOKEN = 4


def output_char_cap(g: CompiledGuard) -> int:
    """A `length` guard's bound as characters of reply text (streams)."""
    d = g.length
    assert d is not None
    caps = [c for c in (d.max_chars, d.max_tokens and d.max_tokens * CHARS_PER_TOKEN) if c]
    return min(caps)


class LengthCap:
    def __init__(self, wire: str, g: CompiledGuard, clock: VerdictClock) -> None:
        self.wire = wire
        self.g = g
        self.clock = clock
        self.cap = output_char_cap(g)
        self.seen = 0
        self.over = False  # flagged already: the rest passes uncounted

    async def feed(self, data: bytes) -> bytes:
        if self.over or not data:
            return data
        t0 = time.perf_counter()
        out: list[bytes] = []
        try:
            for raw in split_events(data):
                ev = parse_event(self.wire, raw)
                room = self.cap - self.seen
                if len(ev.text) <= room or self.over:
                    self.seen += len(ev.text)
                    out.append(raw)
                    continue
                self.clock.worse("block" if self.g.action == "block" else "flag", ["length"])
                if self.g.action != "block":
                    self.over = True
                    out.append(raw)
                    continue
                if room > 0:  # the text up to the cap still goes
                    set_text(ev, ev.text[:room])
                    out.append(ev.encode())
                raise StreamBlocked(self.g.name, b"".join(out), TOO_LONG)
            return b"".join(out)
        finally:
            self.clock.add_time(time.perf_counter() - t0)

    async def flush(self) -> bytes:
        return b""


class SegmentCheck:
    def __init__(self, rt: Runtime, record: RequestRecord, wire: str, g: CompiledGuard,
                 clock: VerdictClock) -> None:
        assert g.model is not None
        self.rt = rt
        self.record = record
        self.wire = wire
        self.g = g
        self.clock = clock
        self.size = g.model.segment_chars
        self.held: list[bytes] = []
        self.text = ""
        self.context = ""

    async def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for raw in split_events(data):
            ev = parse_event(self.wire, raw)
            end = ends_text(self.wire, ev, raw)
            if not self.held and not ev.text and not end:
                out.append(raw)  # adds no text and nothing is held: it cannot leak any
                continue
            self.held.append(ev.encode())
            self.text += ev.text
            if len(self.text) >= self.size or end:
                await self._release(out)
        return b"".join(out)

    async def flush(self) -> bytes:
        """The stream ended without a terminal event: check what is held, release it."""
        out: list[bytes] = []
        if self.held:
            await self._release(out)
        return b"".join(out)

    async def _release(self, out: list[bytes]) -> None:
        if self.text:
            why = await ask(self.rt, self.g, self.context + self.text, self.record, self.clock,
                            "reply", repeat=True)
            if why is not None:
                # Segments already passed in this feed still reach the client; this one not.
                raise StreamBlocked(self.g.name, b"".join(out), why)
            self.context = self.text[-(self.size // 4):]
        out.extend(self.held)
        self.held.clear()
        self.text = ""
