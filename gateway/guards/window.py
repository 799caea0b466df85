"""Output checks on a stream: a sliding window of text over the SSE events, held back only as
much as the window needs.

Each event that adds text (an OpenAI chunk's `delta.content`, an Anthropic `text_delta`, a
Responses `response.output_text.delta`) joins the *pending* events; the detectors scan the
pending text as one string, so a phrase split across two chunks is one match. The oldest
pending event is released once the text after it is at least `window - 1` characters: any
match still to come that touched it would be longer than the window. So the client waits for
at most one window of text, never for the whole answer.

Redaction rewrites the pending events a match covers (the replacement goes where the match
starts, the rest of the match is cut from the events it spans). A match that touches the end
of the pending text may still grow (`bob@example.co` before `.uk` arrives), so it is redacted
only once text follows it or the text ends (`finish_reason`, `message_delta`, `[DONE]`…),
which also releases everything pending in front of the stream's last events.

Events that repeat the whole text (Responses' `response.output_text.done`,
`response.completed`) are checked whole when they arrive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.guards.base import Finding, merge, redact
from gateway.guards.text import rewrite, texts

# One output check as the window runs it: (name, action, find, replacement).
Check = tuple[str, str, Callable[[str], list[Finding]], str]
# Told of each check's first finding on this stream: (name, action, labels).
OnFinding = Callable[[str, str, list[str]], None]


class StreamBlocked(Exception):
    """A block check matched: the stream must end now. `release`: whole events that still go
    to the client in front of the block (a length cap's text up to the cap); nothing
    pending is released."""

    def __init__(self, name: str, release: bytes = b"", why: str | None = None) -> None:
        self.name = name
        self.release = release
        self.why = why


@dataclass(slots=True)
class Event:
    raw: bytes
    obj: dict[str, Any] | None = None
    # Where the delta text sits in `obj` (set via `set_text`), and the text itself.
    path: tuple[Any, ...] = ()
    text: str = ""
    dirty: bool = False

    def encode(self) -> bytes:
        if not self.dirty or self.obj is None:
            return self.raw
        # Rebuild the event with its rewritten JSON, keeping its `event:` line if it had one.
        lines = [ln for ln in self.raw.splitlines() if ln.startswith(b"event:")]
        lines.append(b"data: " + json.dumps(self.obj, separators=(",", ":"),
                                            ensure_ascii=False).encode())
        return b"\n".join(lines) + b"\n\n"


@dataclass(slots=True)
class WindowScanner:
    """The window over one stream, in one wire format (`openai`, `anthropic`, `responses`)."""

    wire: str
    window: int
    checks: list[Check]
    on_finding: OnFinding
    pending: list[Event] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def feed(self, data: bytes) -> bytes:
        """Whole SSE events in; what may go to the client now out. Raises `StreamBlocked`.

        Translators hand over whole events only; bytes after the last event boundary are
        still kept (as one event, unparsed if they do not parse), so nothing is ever lost."""
        out = []
        for raw in split_events(data):
            ev = self._parse(raw)
            if ev.obj is not None and not ev.path:
                self._check_whole(ev)
            self.pending.append(ev)
            if ends_text(self.wire, ev, raw):
                # The text is complete (finish_reason, message_delta, [DONE]…): check it as
                # final and release it in front of the stream's last events.
                out.append(self.flush())
        self._scan(final=False)
        out.append(self._release())
        return b"".join(out)

    def flush(self) -> bytes:
        """The text is complete: check what is pending as final, release all of it."""
        self._scan(final=True)
        out = b"".join(ev.encode() for ev in self.pending)
        self.pending.clear()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _parse(self, raw: bytes) -> Event:
        return parse_event(self.wire, raw)

    def _check_whole(self, ev: Event) -> None:
        """An event that is not a delta but may carry the whole text (Responses' `.done`)."""
        assert ev.obj is not None
        parts = texts(ev.obj)
        if not parts:
            return
        for name, action, find, replacement in self.checks:
            found = [f for t in parts for f in find(t)]
            if not found:
                continue
            self._found(name, action, found)
            if action == "redact":
                ev.obj = rewrite(ev.obj, _redactor(find, replacement))
                ev.dirty = True

    def _scan(self, final: bool) -> None:
        text = "".join(ev.text for ev in self.pending)
        if not text:
            return
        for name, action, find, replacement in self.checks:
            found = find(text)
            if not found:
                continue
            if action == "redact":
                # A match reaching the end may still grow: wait for more text unless final.
                ready = [f for f in found if final or f.end < len(text)]
                if ready:
                    self._found(name, action, ready)
                    self._redact(ready, replacement)
                    text = "".join(ev.text for ev in self.pending)
            else:
                self._found(name, action, found)

    def _found(self, name: str, action: str, found: list[Finding]) -> None:
        if action == "block":
            self.on_finding(name, action, sorted({f.label for f in found}))
            raise StreamBlocked(name)
        if name not in self._seen:  # flag and redact: reported once per stream
            self._seen.add(name)
            self.on_finding(name, action, sorted({f.label for f in found}))

    def _redact(self, found: list[Finding], replacement: str) -> None:
        """Cut each match out of the pending events it spans; its replacement goes where it
        starts. Offsets are in the pending text, events are walked once per match."""
        for f in reversed(merge(found)):  # from the end, so earlier offsets stay true
            pos = 0
            for ev in self.pending:
                start, end = pos, pos + len(ev.text)
                pos = end
                if end <= f.start or start >= f.end or not ev.path:
                    continue
                a, b = max(f.start, start) - start, min(f.end, end) - start
                insert = replacement.format(label=f.label) if start <= f.start < end else ""
                set_text(ev, ev.text[:a] + insert + ev.text[b:])

    def _release(self) -> bytes:
        out = []
        after = sum(len(ev.text) for ev in self.pending)
        while self.pending:
            after -= len(self.pending[0].text)
            # An event that adds no text cannot leak any: it goes as soon as it is first.
            if self.pending[0].text and after < self.window - 1:
                break
            out.append(self.pending.pop(0).encode())
        return b"".join(out)


def parse_event(wire: str, raw: bytes) -> Event:
    """One SSE event of `wire` format, with the text it adds (if any) and where it sits."""
    data = _data_of(raw)
    if data is None or data == b"[DONE]":
        return Event(raw)
    try:
        obj = json.loads(data)
    except ValueError:
        return Event(raw)
    if not isinstance(obj, dict):
        return Event(raw)
    ev = Event(raw, obj)
    path = _delta_path(wire, obj)
    if path is not None:
        value = _get(obj, path)
        ev.path, ev.text = path, value if isinstance(value, str) else ""
    return ev


def _redactor(find: Callable[[str], list[Finding]], replacement: str) -> Callable[[str], str]:
    def fn(s: str) -> str:
        found = find(s)
        return redact(s, found, replacement) if found else s
    return fn


_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def split_events(data: bytes) -> list[bytes]:
    """`data` cut after each SSE event boundary (any of the three line endings), each event
    with its own bytes; a tail without a boundary is an event of its own."""
    out = []
    pos = 0
    for m in _BOUNDARY.finditer(data):
        if data[pos:m.start()].strip():
            out.append(data[pos:m.end()])
        pos = m.end()
    if data[pos:].strip():
        out.append(data[pos:])
    return out


def set_text(ev: Event, text: str) -> None:
    assert ev.obj is not None
    node: Any = ev.obj
    for key in ev.path[:-1]:
        node = node[key]
    node[ev.path[-1]] = text
    ev.text = text
    ev.dirty = True


def _data_of(raw: bytes) -> bytes | None:
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _delta_path(wire: str, obj: dict[str, Any]) -> tuple[Any, ...] | None:
    """Where an event's added text is; None when it adds none (the event is checked whole)."""
    if wire == "openai":
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            c = choices[0]
            delta = c.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                return ("choices", 0, "delta", "content")
            if isinstance(c.get("text"), str):  # /v1/completions
                return ("choices", 0, "text")
        return None
    if wire == "anthropic":
        d = obj.get("delta")
        if obj.get("type") == "content_block_delta" and isinstance(d, dict) \
                and isinstance(d.get("text"), str):
            return ("delta", "text")
        return None
    if obj.get("type") == "response.output_text.delta" and isinstance(obj.get("delta"), str):
        return ("delta",)
    return None


def ends_text(wire: str, ev: Event, raw: bytes) -> bool:
    """The event ends the reply's text: nothing more can join a match."""
    obj = ev.obj
    if wire == "openai":
        if obj is None:
            return _data_of(raw) == b"[DONE]"
        choices = obj.get("choices")
        return isinstance(choices, list) and any(
            isinstance(c, dict) and c.get("finish_reason") for c in choices)
    if obj is None:
        return False
    kind = obj.get("type")
    if wire == "anthropic":
        return kind in ("message_delta", "message_stop")
    return kind in ("response.output_text.done", "response.completed", "response.failed",
                    "response.incomplete")
