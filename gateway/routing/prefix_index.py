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

from asyncio import AbstractEventLoop
from asyncio.events import _get_running_loop
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from xxhash import xxh3_64_intdigest

CHUNK_CHARS = 1024
"""Characters per chunk (~256 tokens): coarse enough that a 6k-token prompt is ~24 chunks."""
CHARS_PER_TOKEN = 4.0
"""Token estimate from characters, as `cost` and admission estimate prompt tokens."""
_CPT = int(CHARS_PER_TOKEN)  # `n // _CPT` is int(n / CHARS_PER_TOKEN), without two calls
assert _CPT == CHARS_PER_TOKEN
OUTBOX_MAX = 4096
"""Records kept for the shared view while it cannot publish (Redis down); oldest dropped."""

Record = tuple[str, Sequence[int], Sequence[int]]
"""(deployment id, fingerprints, tokens per chunk): one prompt sent to one deployment."""
Pending = tuple[str, Sequence[int], Sequence[int], "int | None"]
"""`record_later`'s arguments, kept until the record is applied."""


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
_NO_REPLIES: frozenset[int] = frozenset()

MessageCache = dict[int, tuple[int, ...]]
"""Chain state + a message's text (one xxHash of it, seeded with the state) -> the message's
chunk fingerprints (`Fingerprints`)."""


class Fingerprints:
    """`fingerprints` with the chunk fingerprints of long messages remembered, keyed by one
    xxHash of the whole message seeded with the chain before it: a system prompt, a document
    or a conversation's history comes back in every request that uses it, and hashing it in
    one call instead of one call per chunk is most of what a decision costs. A key collision
    (2^-64) would only misestimate one prompt's cached prefix; a message never seen costs
    that one extra call. Two generations of `generation` entries each bound the memory (a
    6k-token document's entry is about 1 kB): lookups promote from the old one."""

    __slots__ = ("_cap", "_new", "_old")

    def __init__(self, generation: int = 2048) -> None:
        self._cap = generation
        self._new: MessageCache = {}
        self._old: MessageCache = {}

    def get(self, key: int) -> tuple[int, ...] | None:
        hit = self._new.get(key)
        if hit is None:
            hit = self._old.get(key)
            if hit is not None:
                self.put(key, hit)
        return hit

    def put(self, key: int, fps: tuple[int, ...]) -> None:
        if len(self._new) >= self._cap:
            self._old, self._new = self._new, {}
        self._new[key] = fps


def fingerprints(body: Mapping[str, Any], chunk_chars: int = CHUNK_CHARS,
                 cache: Fingerprints | None = None) -> Prompt:
    """Chained fingerprints of the prompt's chunks and each chunk's estimated tokens.

    With `cache`, a message longer than one chunk is looked up by one hash of all of it
    before it is cut; the fingerprints are the same either way. The cache must only ever
    see one `chunk_chars`."""
    return Prompt(*fingerprint_parts(body, chunk_chars, cache))


def fingerprint_parts(body: Mapping[str, Any], chunk_chars: int = CHUNK_CHARS,
                      cache: Fingerprints | None = None
                      ) -> tuple[list[int], list[int], frozenset[int]]:
    """`fingerprints` as a plain tuple, for the routing decision: building and freeing a
    `NamedTuple` (a Python-level `__new__`, a subclass's dealloc) costs ~3k instructions,
    as much as hashing two chat turns."""
    fps: list[int] = []
    tokens: list[int] = []
    replies: list[int] = []
    append = fps.append
    h = 0
    full = chunk_chars // _CPT or 1
    messages = body.get("messages")
    parts: Iterable[tuple[Any, Any]]
    # Chat messages are read here rather than through `_texts`' generator: this runs on
    # every routing decision, and a generator step costs as much as hashing a short chunk.
    parts = messages if isinstance(messages, list) else _texts(body)
    chat = parts is messages
    digest = xxh3_64_intdigest
    roles = _ROLES
    add_token = tokens.append
    part: Any  # a message dict, or a (role, text) pair
    for part in parts:
        if chat:
            try:  # subscripts: two `.get` calls and an `isinstance` cost ~1 µs a decision
                role = part["role"]
                text = part["content"]
            except (KeyError, TypeError, IndexError):  # a key missing, or not a message
                if not isinstance(part, dict):
                    continue
                role = part.get("role", "")
                text = part.get("content")
            if type(text) is not str:
                text = message_text(text)
        else:
            role, text = part
        try:
            rb = roles[role]
        except (KeyError, TypeError):  # a role not seen yet, or not a string
            role = str(role)
            rb = role.encode()
            if len(roles) < 64:  # roles are a handful; a client inventing them is not cached
                roles[role] = rb
        h = digest(rb, h)  # a role change is a boundary even for empty texts
        n = len(text)
        if n <= chunk_chars:  # one chunk (most chat turns): nothing to cut or look up
            if n:
                h = digest(text.encode(), h)
                if role == "assistant":
                    replies.append(len(fps))
                append(h)
                add_token(n // _CPT or 1)
            continue
        first = len(fps)
        ascii_text = text.isascii()
        # ASCII: one copy, whose byte slices are character slices (and the cache's key).
        data = text.encode() if ascii_text or cache is not None else b""
        key = 0
        if cache is not None:
            key = digest(data, h)
            hit = cache.get(key)
            if hit is not None:
                fps.extend(hit)
                h = hit[-1]
        if len(fps) == first:
            if ascii_text:
                for start in range(0, n, chunk_chars):
                    h = digest(data[start:start + chunk_chars], h)
                    append(h)
            else:
                for start in range(0, n, chunk_chars):
                    h = digest(text[start:start + chunk_chars].encode(), h)
                    append(h)
            if cache is not None:
                cache.put(key, tuple(fps[first:]))
        count = len(fps) - first
        tokens.extend([full] * (count - 1))
        tokens.append((n - (count - 1) * chunk_chars) // _CPT or 1)
        if role == "assistant":
            replies.extend(range(first, first + count))
    return fps, tokens, frozenset(replies) if replies else _NO_REPLIES


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

    What a deployment holds of any prompt is a head of it: fingerprints are chained, so a
    chunk is only ever recorded together with every chunk before it, and `record` makes the
    earlier chunks the more recently used, so eviction (oldest first) takes a prompt's tail
    before its head. `groups` and `record` rely on it to bisect instead of walking every
    chunk (only a 64-bit fingerprint collision could break it, and cost one estimate).
    """

    def __init__(self, cache_tokens: int) -> None:
        self._default_capacity = cache_tokens
        self._owners: dict[int, int] = {}  # fingerprint -> bit mask of deployments
        self._endpoints: dict[str, _Endpoint] = {}
        self._ids: list[str] = []  # bit position -> deployment id
        self._outbox: list[Record] | None = None
        self.prompts = Fingerprints()
        """Long messages' chunk fingerprints, for `fingerprints(..., cache=)`."""
        self._pending: list[Pending] = []  # `record_later`'s, oldest first, not yet applied
        self._soon: AbstractEventLoop | None = None  # the loop an `_apply_soon` waits on

    @property
    def outbox(self) -> list[Record] | None:
        """Records made here since the shared view last took them; None: not shared."""
        if self._pending:  # a pending record is one the shared view must not miss
            self.apply()
        return self._outbox

    @outbox.setter
    def outbox(self, records: list[Record] | None) -> None:
        if self._pending:  # they belong to the outbox being replaced, as if made already
            self.apply()
        self._outbox = records

    def record_later(self, deployment_id: str, fps: Sequence[int], tokens: Sequence[int],
                     cache_tokens: int | None = None) -> None:
        """`record`, applied after the routing decision rather than inside it: from an event
        loop callback once the request has gone on (scheduled once per pending batch), or
        else before anything next reads the index (every method here that reads owners, LRUs
        or the outbox applies what is pending first), so every read sees what an immediate
        `record` would have left. Recording and its eviction were a fifth to a third of a
        decision's instructions (docs/routing.md, "Round of 2026-12-03"); deferred, a request
        does not wait for them (the core still does them).
        `fps` and `tokens` are kept, not copied: the caller must not change them."""
        self._pending.append((deployment_id, fps, tokens, cache_tokens))
        # The private getter: None outside a loop (the simulator), where the public one
        # raises, and an exception per decision would cost more than the record it defers.
        loop = _get_running_loop()
        if loop is not None and loop is not self._soon:
            self._soon = loop
            loop.call_soon(self._apply_soon)

    def _apply_soon(self) -> None:
        self._soon = None
        if self._pending:  # a read may have applied them already
            self.apply()

    def apply(self) -> None:
        """Apply the pending records (`record_later`), oldest first."""
        # Taken first, so `record` (which applies pending ones before its own) finds none.
        pending, self._pending = self._pending, []
        for deployment_id, fps, tokens, cache_tokens in pending:
            self.record(deployment_id, fps, tokens, cache_tokens)

    @property
    def pending(self) -> int:
        """Records made with `record_later` and not yet applied."""
        return len(self._pending)

    def _endpoint(self, deployment_id: str) -> _Endpoint:
        ep = self._endpoints.get(deployment_id)
        if ep is None:
            ep = self._endpoints[deployment_id] = _Endpoint(self._default_capacity,
                                                            1 << len(self._ids))
            self._ids.append(deployment_id)
        return ep

    def bit(self, deployment_id: str) -> int:
        if self._pending:  # bits are handed out in order: a pending record may take one
            self.apply()
        return self._endpoint(deployment_id).bit

    def mask(self, deployment_ids: Iterable[str]) -> int:
        if self._pending:
            self.apply()
        m = 0
        for did in deployment_ids:
            m |= self._endpoint(did).bit
        return m

    def ids(self, mask: int) -> list[str]:
        """The deployment ids of a mask's bits."""
        if self._pending:
            self.apply()
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
        counts as held by all of them (the reply was generated there).

        A deployment holding a chunk holds every chunk before it (see the class), so along
        a prompt the holders only ever drop out: each point where some do is found by
        bisection, a few lookups instead of one per chunk."""
        if self._pending:  # the previous decision's record, when no loop callback ran yet
            self.apply()
        n = len(fps)
        if not n:
            return []
        if not candidates:
            return [(0, sum(tokens))]
        get = self._owners.get
        alive = get(fps[0], 0) & candidates
        if not alive:
            return []
        out: list[tuple[int, int]] = []
        lo = 1  # chunks before `lo` are held by every deployment in `alive`
        while lo < n:
            if get(fps[n - 1], 0) & alive == alive:
                break
            hi = n - 1  # not held by all of `alive`
            while lo < hi:
                mid = (lo + hi) >> 1
                if get(fps[mid], 0) & alive == alive:
                    lo = mid + 1
                else:
                    hi = mid
            held = get(fps[lo], 0) & alive
            if not held:  # none holds the rest; replies generated there still count
                end = lo
                while end < n and end in replies:
                    end += 1
                out.append((alive, sum(tokens[:end])))
                return out
            out.append((alive ^ held, sum(tokens[:lo])))  # these matched up to here
            alive = held
            lo += 1
        out.append((alive, sum(tokens)))
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
        if self._pending:  # this one comes after them
            self.apply()
        ep = self._endpoint(deployment_id)
        if cache_tokens:
            ep.capacity = cache_tokens
        lru = ep.lru
        owners = self._owners
        bit = ep.bit
        added = 0
        # Tail first, so a prompt's head is its most recently used chunk and is forgotten
        # last, as vLLM frees a request's blocks tail first. What the deployment already
        # holds is a head of the prompt (see the class): found by bisection, and moved in C
        # (`map`) rather than a Python step per chunk.
        held, hi = 0, len(fps)
        while held < hi:
            mid = (held + hi) >> 1
            if fps[mid] in lru:
                held = mid + 1
            else:
                hi = mid
        for i in range(len(fps) - 1, held - 1, -1):
            fp = fps[i]
            n = lru[fp] = tokens[i]
            added += n
            owners[fp] = owners.get(fp, 0) | bit
        if held:
            any(map(lru.move_to_end, fps[held - 1::-1]))  # each returns None: `any` runs all
        ep.tokens += added
        if ep.tokens > ep.capacity:
            self._evict(ep)
        outbox = self._outbox
        if publish and outbox is not None:
            outbox.append((deployment_id, fps, tokens))
            if len(outbox) > OUTBOX_MAX:  # the oldest half at once: amortised O(1)
                del outbox[: OUTBOX_MAX // 2]

    def _evict(self, ep: _Endpoint) -> None:
        # Locals and bound methods: a new prompt evicts about as many chunks as it adds.
        lru, owners, keep = ep.lru, self._owners, ~ep.bit
        popitem, get, pop = lru.popitem, owners.get, owners.pop
        tokens, capacity = ep.tokens, ep.capacity
        # At most all but the newest chunk go, however large it is (a range step is cheaper
        # than counting down a local and testing it).
        for _ in range(len(lru) - 1):
            if tokens <= capacity:
                break
            fp, n = popitem(False)  # the oldest
            tokens -= n
            held = get(fp, 0) & keep
            if held:
                owners[fp] = held
            else:
                pop(fp, None)
        ep.tokens = tokens

    def cached_tokens(self, deployment_id: str) -> int:
        if self._pending:
            self.apply()
        ep = self._endpoints.get(deployment_id)
        return ep.tokens if ep is not None else 0
