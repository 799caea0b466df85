"""Which deployment probably holds which prompt prefix in its KV cache, learned from the
gateway's own routing decisions (what llm-d calls the approximate prefix-cache scorer) and,
with `state.redis_url`, from every other replica's (`gateway.routing.shared_view`).

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
routing: a wrong one costs a cache miss, never a wrong answer.

Fingerprints are xxHash3 (64-bit) of every byte of the chunk's UTF-8, seeded with the
fingerprint before it: stable across processes (Python's `hash()` is salted per process, so
two replicas could not compare theirs) and the cheapest full hash measured — a 24k-character
prompt in 25 chunks costs ~5 µs, against ~11 µs for salted `hash()` of sampled windows,
~13 µs for `zlib.crc32` and ~47 µs for `hashlib.blake2b` (CPython 3.11). Owners are kept as
a bit mask per fingerprint (one bit per deployment), so matching a prompt against 16
candidates is one integer `&` per chunk rather than a set intersection.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from xxhash import xxh3_64_intdigest

CHUNK_CHARS = 1024
"""Characters per chunk (~256 tokens): coarse enough that a 6k-token prompt is ~24 chunks."""
CHARS_PER_TOKEN = 4.0
"""Token estimate from characters, as `cost` and admission estimate prompt tokens."""
OUTBOX_MAX = 4096
"""Records kept for the shared view while it cannot publish (Redis down); oldest dropped."""

Record = tuple[str, Sequence[int], Sequence[int]]
"""(deployment id, fingerprints, tokens per chunk): one prompt sent to one deployment."""


def message_text(content: Any) -> str:
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
                yield str(m.get("role", "")), message_text(m.get("content"))
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
                    yield str(item.get("role", "")), message_text(item.get("content"))


class Prompt(NamedTuple):
    fps: list[int]
    """Chained fingerprint of each chunk."""
    tokens: list[int]
    """Estimated tokens of each chunk."""
    replies: frozenset[int]
    """Indexes of the chunks that are assistant text."""


_ROLES: dict[str, bytes] = {}  # role -> its bytes, encoded once


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
    digest = xxh3_64_intdigest
    for role, text in parts:
        rb = _ROLES.get(role)
        if rb is None:
            rb = str(role).encode()
            if len(_ROLES) < 64:  # roles are a handful; a client inventing them is not cached
                _ROLES[role] = rb
        h = digest(rb, h)  # a role change is a boundary even for empty texts
        n = len(text)
        if not n:
            continue
        first = len(fps)
        if text.isascii():  # one encode (a copy), then byte slices are character slices
            data = text.encode()
            for start in range(0, n, chunk_chars):
                h = digest(data[start:start + chunk_chars], h)
                fps.append(h)
        else:
            for start in range(0, n, chunk_chars):
                h = digest(text[start:start + chunk_chars].encode(), h)
                fps.append(h)
        count = len(fps) - first
        tokens.extend([full] * (count - 1))
        tokens.append(max(1, int((n - (count - 1) * chunk_chars) / CHARS_PER_TOKEN)))
        if role == "assistant":
            replies.extend(range(first, first + count))
    return Prompt(fps, tokens, frozenset(replies))


class _Endpoint:
    __slots__ = ("bit", "capacity", "lru", "tokens")

    def __init__(self, capacity: int, bit: int) -> None:
        self.capacity = capacity
        self.bit = bit
        self.lru: OrderedDict[int, int] = OrderedDict()  # fingerprint -> tokens, oldest first
        self.tokens = 0


class PrefixIndex:
    """Fingerprint -> deployments believed to cache it, with an LRU per deployment.

    Deployments are numbered as first seen; `mask(ids)` is the bit mask of a candidate set
    and `groups` answers in masks, so a decision never loops over candidates per chunk.
    """

    def __init__(self, cache_tokens: int) -> None:
        self._default_capacity = cache_tokens
        self._owners: dict[int, int] = {}  # fingerprint -> bit mask of deployments
        self._endpoints: dict[str, _Endpoint] = {}
        self._ids: list[str] = []  # bit position -> deployment id
        self.outbox: list[Record] | None = None
        """Records made here since the shared view last took them; None: not shared."""

    def _endpoint(self, deployment_id: str) -> _Endpoint:
        ep = self._endpoints.get(deployment_id)
        if ep is None:
            ep = self._endpoints[deployment_id] = _Endpoint(self._default_capacity,
                                                            1 << len(self._ids))
            self._ids.append(deployment_id)
        return ep

    def bit(self, deployment_id: str) -> int:
        return self._endpoint(deployment_id).bit

    def mask(self, deployment_ids: Iterable[str]) -> int:
        m = 0
        for did in deployment_ids:
            m |= self._endpoint(did).bit
        return m

    def ids(self, mask: int) -> list[str]:
        """The deployment ids of a mask's bits."""
        out = []
        while mask:
            low = mask & -mask
            out.append(self._ids[low.bit_length() - 1])
            mask ^= low
        return out

    def groups(self, fps: Sequence[int], tokens: Sequence[int], candidates: int,
               replies: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
        """(mask, cached-prefix tokens) for the candidates (a mask) with anything cached;
        the masks are disjoint. A chunk in `replies` that none of those still matching holds
        counts as held by all of them (the reply was generated there)."""
        out: list[tuple[int, int]] = []
        owners = self._owners
        alive = candidates
        acc = 0
        started = False
        for i, fp in enumerate(fps):
            held = owners.get(fp, 0) & alive
            if held != alive:
                if not held:
                    if started and i in replies:  # generated there, never routed: cached
                        acc += tokens[i]
                        continue
                    break
                if started:
                    out.append((alive ^ held, acc))  # these matched up to here
                alive = held
            started = True
            acc += tokens[i]
        if started:
            out.append((alive, acc))
        return out

    def matched(self, fps: Sequence[int], tokens: Sequence[int], candidates: Iterable[str],
                replies: frozenset[int] = frozenset()) -> dict[str, int]:
        """Estimated cached-prefix tokens per candidate id (absent: nothing cached)."""
        out: dict[str, int] = {}
        for mask, n in self.groups(fps, tokens, self.mask(candidates), replies):
            for did in self.ids(mask):
                out[did] = n
        return out

    def record(self, deployment_id: str, fps: Sequence[int], tokens: Sequence[int],
               cache_tokens: int | None = None, *, publish: bool = True) -> None:
        """The prompt was sent to `deployment_id`: after its prefill the backend caches it.
        `publish=False` for records another replica made (they are its to publish)."""
        ep = self._endpoint(deployment_id)
        if cache_tokens:
            ep.capacity = cache_tokens
        lru = ep.lru
        owners = self._owners
        bit = ep.bit
        added = 0
        # Tail first, so a prompt's head is its most recently used chunk and is forgotten
        # last, as vLLM frees a request's blocks tail first.
        for i in range(len(fps) - 1, -1, -1):
            fp = fps[i]
            if fp in lru:
                lru.move_to_end(fp)
            else:
                n = lru[fp] = tokens[i]
                added += n
                owners[fp] = owners.get(fp, 0) | bit
        ep.tokens += added
        if ep.tokens > ep.capacity:
            self._evict(ep)
        if publish and self.outbox is not None:
            self.outbox.append((deployment_id, fps, tokens))
            if len(self.outbox) > OUTBOX_MAX:  # the oldest half at once: amortised O(1)
                del self.outbox[: OUTBOX_MAX // 2]

    def _evict(self, ep: _Endpoint) -> None:
        lru, owners, keep = ep.lru, self._owners, ~ep.bit
        while ep.tokens > ep.capacity and len(lru) > 1:
            fp, n = lru.popitem(last=False)
            ep.tokens -= n
            held = owners.get(fp, 0) & keep
            if held:
                owners[fp] = held
            else:
                owners.pop(fp, None)

    def cached_tokens(self, deployment_id: str) -> int:
        ep = self._endpoints.get(deployment_id)
        return ep.tokens if ep is not None else 0
