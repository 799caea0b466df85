"""Incremental detokenization with stop strings, safe for characters split across tokens."""

from __future__ import annotations

from typing import Protocol

# A byte-level tokenizer can end a token in the middle of a UTF-8 character; decoding such a
# prefix yields U+FFFD. Text ending in it is held back until the next token completes it.
_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns one sequence's tokens into text deltas whose concatenation is the final text.

    The decode window starts a few tokens back (``prefix_offset``) because tokenizers such as
    SentencePiece decide a token's leading space from its left neighbour: the new text is the
    window's decode minus the decode of the window without the new tokens (as TGI and vLLM do).
    """

    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        # Until generation ends, the last len(longest stop)-1 characters may be the start of a
        # stop string that must not reach the client, so they are held back.
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._sent = 0
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Append one generated token (not an end-of-sequence token: those are never text)."""
        if self.stopped:
            return
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if len(window) > len(prefix) and not window.endswith(_REPLACEMENT):
            self._append(window[len(prefix) :])
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)

    def finish(self) -> None:
        """Generation ended: flush tokens still held as an incomplete character."""
        if self.stopped or self._read_offset == len(self._ids):
            return
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        self._read_offset = len(self._ids)
        if len(window) > len(prefix):
            self._append(window[len(prefix) :])

    def take(self, final: bool) -> str:
        """The text not yet handed out that can no longer turn into a stop string."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._holdback
        if end <= self._sent:
            return ""
        delta = self.text[self._sent : end]
        self._sent = end
        return delta

    def _append(self, new: str) -> None:
        start = max(0, len(self.text) - self._holdback)
        self.text += new
        if not self._stop:
            return
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
