"""`OpenAIStream.feed`'s per-chunk path (inlined event split, one scan for both empty-`choices`
spellings, the `_flowing` flag) against the code it replaced, kept here verbatim as the
reference: for arbitrary event text cut into arbitrary reads, the same client bytes, and the
same `done`, `error`, `usage` and `chunks`."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.openai_compat import ModelRename, OpenAIStream
from gateway.providers.sse import SSEEvents, text_of


class Reference(OpenAIStream):
    """`feed` and `finish` as they were before (commit fd968e2)."""

    __slots__ = ("_events",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._events = SSEEvents()

    def feed(self, data: bytes) -> bytes:
        whole = self._events.take(data)
        if not whole:
            return b""
        text = text_of(whole)
        if not self._held.holding and self._filters is None and not (
                '"error"' in text or '"choices":[]' in text or '"choices": []' in text
                or "[DONE]" in text):
            plain = self._plain(whole) if '"usage"' in text else whole
            if plain is not None:
                self.chunks += whole.count(b"data:")
                return self._rename(plain) if self._renames else plain
        out: list[bytes] = []
        for event in whole.split(b"\n\n"):
            if event:
                self._event(event, out)
        return b"".join(out)

    def finish(self) -> bytes:
        return self._held.release()


# Pieces that reach every branch: the markers (whole, cut, or spelled nearly), content, usage
# in its spellings, Azure's filter results, line ends of both kinds, event names, comments.
_PAYLOADS = [
    '{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
    '{"choices":[{"index":0,"delta":{"content":"[]"},"finish_reason":null}],"usage":null}',
    '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
    '{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}',
    '{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"total_tokens":1}}',
    '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
    '{"choices": [],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
    '{"choices":[],"prompt_filter_results":[{"x":1}]}', '{"choices": []}', "[DONE]",
    '{"error":{"message":"boom"}}', '{"model":"up","choices":[{"delta":{"content":"a"}}]}',
]
_PIECES = [
    "data: ", "data:", "\n", "\n\n", "\r\n", "\r\n\r\n", "event: x\n", ": ping\n",
    '"choices":[]', '"choices": []', '"choices":', "[]", "[ ]", "[{", "[DONE]", "[DONE", "DONE]",
    '"error"', '"usage"', ',"usage":null', '"usage": null', '"content":"', '"content":""',
    '"model": "up"', "{", "}", "x", "é", '"', *_PAYLOADS,
]
_JUNK = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=6)), max_size=12).map(
    "".join)
# Mostly well-formed events (so streams get past their held frames and reach the fast path),
# their payloads whole or made of pieces, among arbitrary text.
_EVENT = st.builds(lambda name, data, payload, end: name + data + payload + end,
                   st.sampled_from(["", "", "event: x\n", ": c\n"]),
                   st.sampled_from(["data: ", "data:"]),
                   st.one_of(st.sampled_from(_PAYLOADS), _JUNK),
                   st.sampled_from(["\n\n", "\n\n", "\r\n\r\n", "\n"]))
_TEXT = st.lists(st.one_of(_EVENT, _EVENT, _EVENT, _JUNK), max_size=8).map("".join)


def _streams(keep_final: bool, keep_every: bool, renamed: bool) -> tuple[Any, Any]:
    def classify(status: int, body: bytes) -> tuple[int, bytes]:
        return status, body

    def make(cls: type[OpenAIStream]) -> Any:
        rename = ModelRename("up", "pub" if renamed else "up")
        return cls(rename, keep_final, keep_every, classify)

    return make(Reference), make(OpenAIStream)


@settings(max_examples=800, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400)),
       keep_final=st.booleans(), keep_every=st.booleans(), renamed=st.booleans())
def test_feed_matches_the_code_it_replaced(texts: list[str], cuts: list[int], keep_final: bool,
                                           keep_every: bool, renamed: bool) -> None:
    ref, new = _streams(keep_final, keep_every, renamed)
    for text in texts:
        data = text.encode()
        # The same bytes, cut into reads at arbitrary points (empty reads left out: the
        # upstream's reader never yields one).
        points = sorted({c for c in cuts if 0 < c < len(data)})
        reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        for read in reads:
            if read:
                assert new.feed(read) == ref.feed(read)
                assert (new.done, new.error, new.usage, new.chunks) == \
                    (ref.done, ref.error, ref.usage, ref.chunks)
    assert new.finish() == ref.finish()
    # A read after the end, as a reader that goes on would make.
    for read in (b'data: {"choices":[{"delta":{"content":"z"}}]}\n\n', b"data: [DONE]\n\n"):
        assert new.feed(read) == ref.feed(read)
        assert (new.done, new.chunks) == (ref.done, ref.chunks)
