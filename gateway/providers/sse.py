"""Server-sent events both ways for the translating adapters: whole events out of an upstream's
byte stream, and the OpenAI `chat.completion.chunk` events a translated stream is written as."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.accounting.usage import Usage

DONE = b"data: [DONE]\n\n"


def text_of(data: bytes) -> str:
    """`data` as text for finding ASCII markers in it: latin-1, one character per byte, so it
    never fails and costs a copy, not a UTF-8 decode. A marker matches here exactly where its
    bytes match (every byte of a multi-byte UTF-8 character is >= 0x80, never ASCII)."""
    return data.decode("latin-1")


def has_any(text: str, needles: tuple[str, ...]) -> bool:
    """Whether any of `needles` occurs in `text` (from `text_of`), for a stream's per-chunk
    checks.

    On str, not bytes: on CPython 3.11 `needle in some_bytes` first tries the needle as an
    integer (`5 in b`) and raises and clears a TypeError, with its formatted message, every
    time (~1,800 instructions); `in` on str is a plain search, cheaper than `bytes.find`."""
    for needle in needles:
        if needle in text:
            return True
    return False


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class SSEEvents:
    """Whole SSE events out of arbitrary byte splits: (event name, data payload, raw event)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def take(self, data: bytes) -> bytes:
        """The whole events that `data` completes, as one block ending in a blank line (b""
        while none is complete); the rest waits for the next call. Line ends are LF."""
        buf = self._buf + data if self._buf else data
        # Gemini separates events with CRLF CRLF; SSE allows either. Tested as the byte 13 (a
        # memchr; most streams have none) rather than `b"\r\n" in`: see has_any.
        if 13 in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2:]
        return buf[: end + 2]

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        whole = self.take(data)
        return events(whole) if whole else []


def payload(raw: bytes) -> bytes:
    """The data of one event (its `data:` lines joined)."""
    return b"\n".join(ln[5:].lstrip(b" ") for ln in raw.split(b"\n") if ln.startswith(b"data:"))


def events(whole: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(event name, data payload, raw event) of each event in a block of whole events."""
    out = []
    for raw in whole[:-2].split(b"\n\n"):
        name, data = b"", []
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if data or name:
            out.append((name, b"\n".join(data), raw + b"\n\n"))
    return out


class HeldFrames:
    """A stream's client bytes held back until its first content (the role chunk, lifecycle
    events): until then nothing has reached the client and the proxy can still fall back
    when the upstream drops. Released, in order, by the first frame that opens the stream."""

    __slots__ = ("_held", "holding")

    def __init__(self) -> None:
        self._held: list[bytes] | None = []
        # Whether frames are still held: read once per chunk, so an attribute, not a property.
        self.holding = True

    def emit(self, out: list[bytes], data: bytes | None, opens: bool) -> None:
        held = self._held
        if held is None:
            if data:
                out.append(data)
            return
        if data:
            held.append(data)
        if opens:
            out.extend(held)
            self._held = None
            self.holding = False

    def release(self) -> bytes:
        held, self._held = self._held, None
        self.holding = False
        return b"".join(held or ())


class ChunkWriter:
    """The OpenAI chunks of one translated stream, all with the same id, time and model."""

    __slots__ = ("created", "id", "model")

    def __init__(self, public_model: str, reply_id: str = "") -> None:
        self.model = public_model
        self.id = reply_id
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]]) -> bytes:
        return b"data: " + compact_json({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": choices,
        }) + b"\n\n"

    def end(self, usage: Usage | None, include_usage: bool) -> bytes:
        """The usage-only final chunk (when the client asked for usage), then `[DONE]`."""
        if not include_usage or usage is None:
            return DONE
        return b"data: " + compact_json({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [], "usage": usage.to_openai(),
        }) + b"\n\n" + DONE
