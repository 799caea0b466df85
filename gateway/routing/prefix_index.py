"""Which deployment probably holds which prompt prefix in its KV cache, learned from this
gateway's own routing decisions (what llm-d calls the approximate prefix-cache scorer).

A prompt is cut into chunks: each message's text in pieces of `CHUNK_CHARS` characters
(~256 tokens), and each chunk gets a fingerprint chained on every chunk before it, so two
prompts share fingerprints exactly as far as they share leading chunks — the way vLLM's
automatic prefix cache keys its KV blocks by a hash chain. After a request is sent to a
deployment, its prompt's fingerprints are recorded there; a later prompt's estimated cached
prefix on a deployment is the run of its leading fingerprints recorded there.

Each deployment's record is an LRU bounded by the tokens its cache is believed to hold, so a
prefix not sent there for a long while is forgotten about when the backend would have evicted
it. A chunk of an assistant message that no deployment is known to hold does not end the
match: a backend caches the reply it generated, and the client sends it back in the next
turn's prompt before the gateway has ever routed it. The estimate is a guess and only steers
routing: a wrong one costs a cache miss, never a
wrong answer.

Fingerprints sample each chunk (its end offset and two 32-character windows, head and tail)
rather than hashing all of it: hashing every character of a 6k-token prompt costs ~20 µs in
CPython, the whole routing decision's budget. Two chunks that differ only between the windows
collide; the chain makes that matter only when everything before them matched too. They use
Python's `hash()`, which is salted per process: the index is one process's own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

CHUNK_CHARS = 1024
"""Characters per chunk (~256 tokens): coarse enough that a 6k-token prompt is ~24 chunks."""
CHARS_PER_TOKEN = 4.0
"""Token estimate from characters, as `cost` and admission estimate prompt tokens."""
_W = 32  # characters per sampled window


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _texts(body: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(role, text) of each part of the prompt, in order."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                yield str(m.get("role", "")), _text(m.get("content"))
        return
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str):
        yield "", prompt
    elif isinstance(prompt, list):  # Responses input items, or token ids
        if all(isinstance(p, int) for p in prompt):
            yield "", ",".join(map(str, prompt))
        else:
            for item in prompt:
                if isinstance(item, dict):
                    yield str(item.get("role", "")), _text(item.get("content"))


class Prompt(NamedTuple):
    fps: list[int]
    """Chained fingerprint of each chunk."""
    tokens: list[int]
    """Estimated tokens of each chunk."""
    replies: frozenset[int]
    """Indexes of the chunks that are assistant text."""


def fingerprints(body: Mapping[str, Any], chunk_chars: int = CHUNK_CHARS) -> Prompt:
    """Chained fingerprints of the prompt's chunks and each chunk's estimated tokens."""
    fps: list[int] = []
    tokens: list[int] = []
    replies: list[int] = []
    h = 0
    full = max(1, int(chunk_chars / CHARS_PER_TOKEN))
    messages = body.get("messages")
    parts: Iterable[tuple[str, str]]
    if isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        # The common case, without the generator: this runs on every routing decision.
        parts = [(m.get("role", ""), m["content"]) for m in messages]
    else:
        parts = _texts(body)
    for role, text in parts:
        n = len(text)
        h = hash((h, role))  # a role change is a boundary even for empty texts
        reply = role == "assistant"
        start = 0
        while start < n:
            end = start + chunk_chars
            if end >= n:
                end = n
                tokens.append(max(1, int((end - start) / CHARS_PER_TOKEN)))
            else:
                tokens.append(full)
            h = hash((h, end, text[start:start + _W], text[end - _W:end]))
            if reply:
                replies.append(len(fps))
            fps.append(h)
            start = end
    return Prompt(fps, tokens, frozenset(replies))


class _Endpoint:
    __slots__ = ("capacity", "lru", "tokens")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: OrderedDict[int, int] = OrderedDict()  # fingerprint -> tokens, oldest first
        self.tokens = 0


class PrefixIndex:
    """Fingerprint -> deployments believed to cache it, with an LRU per deployment."""

    def __init__(self, cache_tokens: int) -> None:
        self._default_capacity = cache_tokens
        self._owners: dict[int, set[str]] = {}
        self._endpoints: dict[str, _Endpoint] = {}

    def matched(self, fps: Sequence[int], tokens: Sequence[int], candidates: set[str],
                replies: frozenset[int] = frozenset()) -> dict[str, int]:
        """Estimated cached-prefix tokens per candidate (absent: nothing cached). A chunk in
        `replies` that nobody holds counts as held by whoever matched up to it."""
        out: dict[str, int] = {}
        alive: set[str] | None = None
        acc = 0
        owners = self._owners
        for i, (fp, n) in enumerate(zip(fps, tokens, strict=True)):
            held = owners.get(fp)
            if not held:
                if alive and i in replies:  # generated there, never routed: still cached
                    acc += n
                    for d in alive:
                        out[d] = acc
                    continue
                break
            alive = (held & candidates) if alive is None else (alive & held)
            if not alive:
                break
            acc += n
            for d in alive:
                out[d] = acc
        return out

    def record(self, deployment_id: str, fps: Sequence[int], tokens: Sequence[int],
               cache_tokens: int | None = None) -> None:
        """The prompt was sent to `deployment_id`: after its prefill the backend caches it."""
        ep = self._endpoints.get(deployment_id)
        if ep is None:
            ep = self._endpoints[deployment_id] = _Endpoint(self._default_capacity)
        if cache_tokens:
            ep.capacity = cache_tokens
        lru = ep.lru
        owners = self._owners
        # Tail first, so a prompt's head is its most recently used chunk and is forgotten
        # last, as vLLM frees a request's blocks tail first.
        for fp, n in zip(reversed(fps), reversed(tokens), strict=True):
            if fp in lru:
                lru.move_to_end(fp)
            else:
                lru[fp] = n
                ep.tokens += n
                held = owners.get(fp)
                if held is None:
                    owners[fp] = {deployment_id}
                else:
                    held.add(deployment_id)
        while ep.tokens > ep.capacity and len(lru) > 1:
            fp, n = lru.popitem(last=False)
            ep.tokens -= n
            held = owners.get(fp)
            if held is not None:
                held.discard(deployment_id)
                if not held:
                    del owners[fp]

    def cached_tokens(self, deployment_id: str) -> int:
        ep = self._endpoints.get(deployment_id)
        return ep.tokens if ep is not None else 0
