"""The exact response cache, as a stage (docs/stages.md).

`before`: a cacheable request (chat, Anthropic Messages or Responses; the rule enabled for its
model and tenant; deterministic unless the rule says otherwise; no `Cache-Control: no-store`)
looks up its key; a hit is an `Answer` (no upstream call). A miss goes upstream, and the reply
is stored when it is worth replaying: complete (`finish_reason: stop`, `end_turn`, a
`completed` Response; tool calls when the rule allows), one choice, no logprobs, within the
size bound. Replies reached by translation are stored in the chat shape and replayed through
the ingress codec; native pass-through replies (Anthropic → Anthropic, Responses → a Responses
backend) in their own shape (`cache_native.py`, `cache_replay.py`). A failed, cut (`length`),
blocked or client-abandoned stream never reaches `finish`, so it is never stored. Every request
the cache applies to gets `x-gateway-cache: hit|miss|bypass`.

Off the request's path: a store is scheduled with `loop.call_soon` once the reply is complete,
so the check, the entry's encoding and the write run after the handler has handed the reply
on (`cache_store.put_soon`). Counted in `cache_metrics.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.accounting.usage import Usage
from gateway.policy.cache import CacheSettings, EffectiveRule, resolve
from gateway.providers.request_json import encode as encode_json
from gateway.stages.base import (
    ORDER_CACHE,
    Answer,
    ReplyInfo,
    Stage,
    StageContext,
    StageRun,
    StreamWatch,
    Wire,
)
from gateway.stages.cache_key import cache_key, deterministic, keyed_request
from gateway.stages.cache_metrics import CacheMetrics, NullCacheMetrics
from gateway.stages.cache_native import (
    AnthropicCapture,
    ResponsesCapture,
    anthropic_storable,
    responses_storable,
)
from gateway.stages.cache_store import CacheStore, MemoryStore, RedisStore
from gateway.stages.cache_stream import StreamCapture

if TYPE_CHECKING:
    from gateway.policy.models import Policy
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.cache")

HEADER = "x-gateway-cache"
_STORED_FINISH = frozenset({"stop"})
# Decoded chat answers kept per stage (`CacheStage.answer`): at most this many entry bytes.
_DECODED_BYTES = 8 * 1024 * 1024
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})


def build_cache_stages(policy: Policy, runtime: Runtime) -> Iterable[Stage]:
    """One cache stage when the policy caches anything at all."""
    on = policy.cache is not None and policy.cache.enabled is not False
    wanted = on or any(r.cache is not None and r.cache.enabled for r in policy.models.values())
    if not wanted:
        return ()
    # The app's cache series, where the runtime has them (a benchmark's bare runtime does not).
    metrics = getattr(runtime, "cache_metrics", None)
    return (CacheStage(policy, metrics if isinstance(metrics, CacheMetrics) else None),)


def _store_for(policy: Policy, settings: CacheSettings, metrics: CacheMetrics) -> CacheStore:
    """The policy's store — the one the previous policy used when it is the same place, so a
    reload keeps the memory cache's entries (and Redis its connection pool)."""
    url = policy.state.redis_url if settings.backend == "redis" else None
    if settings.backend == "redis" and not url:
        # `gateway policy check` names this too (checks in policy/issues.py would be better
        # placed, but a missing URL must never crash a reload): stay in memory.
        log.error("cache.backend is redis but state.redis_url is unset; caching in memory")
    prefix = policy.state.key_prefix + settings.key_prefix
    where: tuple[str, ...] = ("redis", url, prefix) if url else ("memory",)
    kept = metrics.kept_store
    if kept is not None and kept[0] == where:
        same: CacheStore = kept[1]
        if isinstance(same, MemoryStore):
            same.max_entries = settings.max_entries  # a smaller bound trims on the next write
        return same
    store: CacheStore = RedisStore(url, prefix) if url else MemoryStore(
        settings.max_entries, metrics.evicted)
    metrics.kept_store = (where, store)
    return store


class CacheStage:
    name = "cache"
    order = ORDER_CACHE

    def __init__(self, policy: Policy, metrics: CacheMetrics | None = None) -> None:
        self.settings = policy.cache or CacheSettings()
        self.default_on = policy.cache is not None
        self.metrics = metrics or NullCacheMetrics()
        self.store = _store_for(policy, self.settings, self.metrics)
        # Its lookups never suspend (memory): a hit is answered within one loop turn.
        self.synchronous: bool = getattr(self.store, "synchronous", False)
        self.metrics.watch_store(self.store.size)
        # (model, tenant) → its resolved rule and the fields its key ignores, as a set: the
        # policy is fixed for this stage's life.
        self._rules: dict[tuple[str, str], tuple[EffectiveRule, frozenset[str]]] = {}
        # Key → (the memory store's entry, its decoded chat answer): a hot entry is decoded
        # once, not on every hit. Valid while the store returns that very bytes object (`is`:
        # a rewrite is another object); bounded in bytes, then started afresh.
        self._decoded: dict[str, tuple[bytes, Answer]] = {}
        self._decoded_bytes = 0

    def rule(self, ctx: StageContext) -> tuple[EffectiveRule, frozenset[str]]:
        key = (ctx.call.model, ctx.principal.tenant)
        found = self._rules.get(key)
        if found is None:
            tenant = ctx.policy.tenants.get(ctx.principal.tenant)
            rule = resolve(ctx.policy.cache, ctx.route.cache, tenant.cache if tenant else None,
                           default_enabled=self.default_on)
            found = (rule, frozenset(rule.ignore_fields))
            if len(self._rules) < 100_000:  # tenants issued at run time are not in the policy
                self._rules[key] = found
        return found

    def answer(self, key: str, raw: bytes) -> Answer | None:
        """The entry's `Answer` (None: unreadable). A chat answer from the memory store is
        kept decoded: replaying only copies its top level (`answer.completion`), and a
        native one, whose replay may be kept by the ingress, is decoded afresh."""
        memo = self._decoded.get(key)
        if memo is not None and memo[0] is raw:
            return memo[1]
        answer = decode(raw)
        if answer is not None and answer.wire == "openai" and self.synchronous:
            if self._decoded_bytes + len(raw) > _DECODED_BYTES:
                self._decoded.clear()
                self._decoded_bytes = 0
            old = self._decoded.pop(key, None)
            if old is not None:
                self._decoded_bytes -= len(old[0])
            self._decoded[key] = (raw, answer)
            self._decoded_bytes += len(raw)
        return answer

    def begin(self, ctx: StageContext) -> StageRun | None:
        call = ctx.call
        if call.endpoint != "chat":
            return None
        rule, ignored = self.rule(ctx)
        if not rule.enabled:
            return None
        kind, body = keyed_request(call)
        control = ctx.headers.get("cache-control")
        control = control.lower() if control else ""
        n = body.get("n")
        reason = "no_store" if "no-store" in control else (
            "nondeterministic" if rule.deterministic_only and not deterministic(body) else (
                "n" if n is not None and n != 1 else None))
        if reason is not None:
            ctx.response_headers[HEADER] = "bypass"
            self.metrics.lookup(call.model, ctx.principal.tenant, "bypass", reason)
            return None
        tenant = None if rule.share_across_tenants else ctx.principal.tenant
        key = cache_key(tenant, call.model, kind, body, ignored)
        # `no-cache`: ask upstream afresh (never served from cache), and keep the new answer.
        # A Responses `store: false` asks that nothing of the answer be retained: it may be
        # answered from cache (that retains nothing new) but is never written to it.
        keep = not (kind == "responses" and body.get("store") is False)
        return CacheRun(self, ctx, rule, key, "no-cache" not in control, keep)


class CacheRun(StageRun):
    def __init__(self, stage: CacheStage, ctx: StageContext, rule: EffectiveRule, key: str,
                 lookup: bool, keep: bool = True) -> None:
        self.stage = stage
        self.ctx = ctx
        self.rule = rule
        self.key = key
        self.lookup = lookup
        self.keep_reply = keep
        # A memory lookup never suspends: the admission marker can wait (pipeline.py).
        self.never_suspends = stage.synchronous or not lookup

    async def before(self) -> Answer | None:
        # Set here, not in `begin`: a request an earlier stage blocked was never looked up.
        headers = self.ctx.response_headers
        count = self.stage.metrics.lookup
        model, tenant = self.ctx.call.model, self.ctx.principal.tenant
        if not self.lookup:
            headers[HEADER] = "bypass"
            count(model, tenant, "bypass", "no_cache")
            return None
        headers[HEADER] = "miss"
        raw = await self.stage.store.get(self.key)
        answer = None if raw is None else self.stage.answer(self.key, raw)
        if answer is None:
            count(model, tenant, "miss", "absent" if raw is None else "unreadable")
            return None
        headers[HEADER] = "hit"
        count(model, tenant, "hit", "")
        return answer

    # ---- storing, once the reply is complete -------------------------------------------------

    def _soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn` after the handler has handed the reply on (next loop turn)."""
        asyncio.get_running_loop().call_soon(self._guarded, fn, args)

    @staticmethod
    def _guarded(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:  # the cache may only save work: a store that fails is logged
            log.exception("response cache: could not store a reply")

    async def reply(self, body: bytes, info: ReplyInfo) -> bytes:
        # The bytes the client gets (after the output guards), whatever their shape: not
        # `call.final_response`, which a guard's redaction of the bytes does not change.
        self._soon(self._store_bytes, body, info)
        return body

    def stream(self, info: ReplyInfo) -> StreamWatch | None:
        if info.wire == "openai":
            return StreamCapture(self, info)
        if info.wire == "anthropic":
            return AnthropicCapture(self, info)
        return ResponsesCapture(self, info)

    def _store_bytes(self, body: bytes, info: ReplyInfo) -> None:
        # An OpenAI-shaped reply is read only as far as its check needs (`_CHAT`): msgspec
        # skips the rest — the text, `usage`… — without building it (decoding the whole reply
        # into dicts was most of a store's cost). Not JSON, or not an object: nothing stored.
        try:
            if info.wire == "openai":
                try:
                    choices = _CHAT.decode(body).choices
                except msgspec.ValidationError:
                    # Malformed `choices` (`not_complete`), or a top level that is not an
                    # object: told apart here, on the rare reply that fails the decode.
                    if not isinstance(msgspec.json.decode(body), dict):
                        return
                    choices = None
                result = self._chat_result(choices) if self.keep_reply else "store_false"
            else:
                obj = msgspec.json.decode(body)
                if not isinstance(obj, dict):
                    return
                result = self._storable(obj, info.wire) if self.keep_reply else "store_false"
        except msgspec.DecodeError:
            return
        self._store(result, info, info.usage, body, None)

    def keep(self, completion: dict[str, Any], info: ReplyInfo,
             usage: Usage | None = None) -> None:
        """Keep a reply assembled from a stream (chat completion, or a native object)."""
        self._soon(self._keep, completion, info, usage)

    def _keep(self, obj: dict[str, Any], info: ReplyInfo, usage: Usage | None) -> None:
        result = self._storable(obj, info.wire) if self.keep_reply else "store_false"
        self._store(result, info, usage, None, obj)

    keep_native = keep

    def _storable(self, obj: dict[str, Any], wire: Wire) -> str:
        """`stored` when worth replaying, else why not (the stores metric's result)."""
        tools = self.rule.cache_tool_calls
        if wire == "anthropic":
            ok = anthropic_storable(obj, tools)
        elif wire == "responses":
            ok = responses_storable(obj, tools)
        else:
            return self._chat_storable(obj)
        return "stored" if ok else "not_complete"

    def _chat_storable(self, completion: dict[str, Any]) -> str:
        try:
            choices = msgspec.convert(completion.get("choices"), _Choices)
        except msgspec.ValidationError:
            return "not_complete"
        return self._chat_result(choices)

    def _chat_result(self, choices: list[_ChatChoice] | None) -> str:
        """A chat completion's `choices` (as read by `_CHAT`, or converted; None: missing or
        malformed) → `stored`, or why not: one choice, a message, no logprobs, `stop` (or
        tool calls, when the rule allows)."""
        if choices is None or len(choices) != 1:
            return "not_complete"
        choice = choices[0]
        message = choice.message
        if choice.logprobs is not None or message is None:
            return "not_complete"
        finish = choice.finish_reason
        if message.tool_calls or message.function_call or finish in _TOOL_FINISH:
            return "stored" if self.rule.cache_tool_calls else "tool_calls"
        return "stored" if finish in _STORED_FINISH else "not_complete"

    def _store(self, result: str, info: ReplyInfo, usage: Usage | None, raw: bytes | None,
               obj: dict[str, Any] | None) -> None:
        """Encode and write one complete reply whose check said `result` (`raw`: its bytes as
        received, not re-encoded; else `obj`, a reply assembled from a stream)."""
        if result == "stored":
            entry = encode(raw if raw is not None else encode_json(obj),
                           usage if usage is not None else info.usage, info)
            if len(entry) > self.stage.settings.max_entry_bytes:
                result = "too_large"
            else:
                self.stage.store.put_soon(self.key, entry, self.rule.ttl_s)
        self.stage.metrics.store(self.ctx.call.model, self.ctx.principal.tenant, result)


class _ChatMessage(msgspec.Struct):
    tool_calls: Any = None
    function_call: Any = None


class _ChatChoice(msgspec.Struct):
    # A `message` that is not an object (nor null) fails the decode: `not_complete`.
    message: _ChatMessage | None = None
    logprobs: Any = None
    finish_reason: Any = None


_Choices = list[_ChatChoice] | None


class _ChatReply(msgspec.Struct):
    # A choice, or a message, that is not an object (nor null) fails the decode.
    choices: _Choices = None


_CHAT = msgspec.json.Decoder(_ChatReply)


class _Meta(msgspec.Struct, array_like=True, frozen=True):
    """An entry's first line: a JSON array, read and checked by msgspec in one call."""

    v: int
    wire: Wire
    deployment: str
    provider: str
    upstream_model: str
    # Usage buckets: input_uncached, cache_read, cache_write, output, reasoning.
    usage: tuple[int, int, int, int, int] | None


_META = msgspec.json.Decoder(_Meta)
_VERSION = 2


def encode(body: bytes, usage: Usage | None, info: ReplyInfo) -> bytes:
    """An entry: one line saying whose reply it is, in which shape (`wire`) and what it cost,
    then the reply's bytes as they came (not re-encoded: the body is most of the entry)."""
    meta = _Meta(_VERSION, info.wire, info.target.id, info.target.provider_name,
                 info.target.upstream_model, None if usage is None else (
                     usage.input_uncached, usage.cache_read, usage.cache_write, usage.output,
                     usage.reasoning))
    return encode_json(meta) + b"\n" + body


def decode(raw: bytes) -> Answer | None:
    """A stored entry → the `Answer` it replays (None: unreadable, treated as a miss)."""
    head, _, rest = raw.partition(b"\n")
    try:
        meta = _META.decode(head)
        body = msgspec.json.decode(rest)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("response cache: unreadable entry; serving as a miss")
        return None
    if meta.v != _VERSION or not isinstance(body, dict):
        return None
    u = meta.usage
    usage = None if u is None else Usage(u[0], u[1], u[2], u[3], u[4])
    if meta.wire == "openai":
        # The hit reports the stored usage itself, in OpenAI's shape once per decode (the
        # replay only reads it: `answer.completion`).
        if usage is None:
            body.pop("usage", None)
        else:
            body["usage"] = usage.to_openai()
    return Answer(body, usage, meta.deployment, meta.provider, meta.upstream_model,
                  wire=meta.wire)
