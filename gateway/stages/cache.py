"""The exact response cache, as a stage (docs/stages.md).

`before`: a cacheable request (chat, the rule enabled for its model and tenant, deterministic
unless the rule says otherwise, no `Cache-Control: no-cache/no-store`) looks up its key; a hit
is an `Answer` (no upstream call). A miss goes upstream, and the reply is stored when it is
worth replaying: complete (`finish_reason: stop`, or `tool_calls` when the rule allows), one
choice, no logprobs, OpenAI-shaped (a native pass-through reply is not stored), within the
size bound. A failed, cut (`length`), blocked or client-abandoned stream never reaches `finish`,
so it is never stored. Every request the cache applies to gets `x-gateway-cache: hit|miss|bypass`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.accounting.usage import Usage
from gateway.policy.cache import CacheSettings, EffectiveRule, resolve
from gateway.stages.base import ORDER_CACHE, Answer, ReplyInfo, Stage, StageContext, StageRun
from gateway.stages.cache_key import cache_key, deterministic
from gateway.stages.cache_store import CacheStore, MemoryStore, RedisStore
from gateway.stages.cache_stream import StreamCapture

if TYPE_CHECKING:
    from gateway.policy.models import Policy
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.cache")

HEADER = "x-gateway-cache"
_STORED_FINISH = frozenset({"stop"})
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})
# Ingresses whose hit the proxy can answer (Responses stores each response for
# `previous_response_id`, which a replay does not do yet).
_INGRESSES = frozenset({"openai", "anthropic"})


def build_cache_stages(policy: Policy, runtime: Runtime) -> Iterable[Stage]:
    """One cache stage when the policy caches anything at all."""
    on = policy.cache is not None and policy.cache.enabled is not False
    wanted = on or any(r.cache is not None and r.cache.enabled for r in policy.models.values())
    if not wanted:
        return ()
    return (CacheStage(policy),)


def _store_for(policy: Policy, settings: CacheSettings) -> CacheStore:
    if settings.backend == "redis":
        url = policy.state.redis_url
        if not url:
            # `gateway policy check` names this too (checks in policy/issues.py would be
            # better placed, but a missing URL must never crash a reload): stay in memory.
            log.error("cache.backend is redis but state.redis_url is unset; caching in memory")
        else:
            return RedisStore(url, policy.state.key_prefix + settings.key_prefix)
    return MemoryStore(settings.max_entries)


class CacheStage:
    name = "cache"
    order = ORDER_CACHE

    def __init__(self, policy: Policy) -> None:
        self.settings = policy.cache or CacheSettings()
        self.default_on = policy.cache is not None
        self.store = _store_for(policy, self.settings)
        # (model, tenant) → its resolved rule: the policy is fixed for this stage's life.
        self._rules: dict[tuple[str, str], EffectiveRule] = {}

    def rule(self, ctx: StageContext) -> EffectiveRule:
        key = (ctx.call.model, ctx.principal.tenant)
        rule = self._rules.get(key)
        if rule is None:
            tenant = ctx.policy.tenants.get(ctx.principal.tenant)
            rule = resolve(ctx.policy.cache, ctx.route.cache, tenant.cache if tenant else None,
                           default_enabled=self.default_on)
            if len(self._rules) < 100_000:  # tenants issued at run time are not in the policy
                self._rules[key] = rule
        return rule

    def begin(self, ctx: StageContext) -> StageRun | None:
        call = ctx.call
        if call.endpoint != "chat" or call.ingress not in _INGRESSES:
            return None
        rule = self.rule(ctx)
        if not rule.enabled:
            return None
        body = call.body
        n = body.get("n")
        control = (ctx.headers.get("cache-control") or "").lower()
        no_store = "no-store" in control
        if (rule.deterministic_only and not deterministic(body)) or no_store or (
                n is not None and n != 1):
            ctx.response_headers[HEADER] = "bypass"
            return None
        # `no-cache`: ask upstream afresh (never served from cache), and keep the new answer.
        lookup = "no-cache" not in control
        tenant = None if rule.share_across_tenants else ctx.principal.tenant
        key = cache_key(tenant, call.model, call.endpoint, body, rule.ignore_fields)
        return CacheRun(self, ctx, rule, key, lookup)


class CacheRun(StageRun):
    def __init__(self, stage: CacheStage, ctx: StageContext, rule: EffectiveRule, key: str,
                 lookup: bool) -> None:
        self.stage = stage
        self.ctx = ctx
        self.rule = rule
        self.key = key
        self.lookup = lookup

    async def before(self) -> Answer | None:
        # Set here, not in `begin`: a request an earlier stage blocked was never looked up.
        headers = self.ctx.response_headers
        if not self.lookup:
            headers[HEADER] = "bypass"
            return None
        headers[HEADER] = "miss"
        raw = await self.stage.store.get(self.key)
        if raw is None:
            return None
        answer = decode(raw)
        if answer is None:
            return None
        self.ctx.response_headers[HEADER] = "hit"
        return answer

    async def reply(self, body: bytes, info: ReplyInfo) -> bytes:
        if info.wire != "openai":
            return body
        try:
            obj = json.loads(body)
        except ValueError:
            return body
        if isinstance(obj, dict):
            await self.keep(obj, info, raw=body)
        return body

    def stream(self, info: ReplyInfo) -> StreamCapture | None:
        if info.wire != "openai":
            return None
        return StreamCapture(self, info)

    def storable(self, completion: dict[str, Any]) -> bool:
        choices = completion.get("choices")
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return False
        choice = choices[0]
        if choice.get("logprobs") is not None:
            return False
        finish = choice.get("finish_reason")
        message = choice.get("message")
        if not isinstance(message, dict):
            return False
        calls_tools = bool(message.get("tool_calls") or message.get("function_call"))
        if calls_tools or finish in _TOOL_FINISH:
            return self.rule.cache_tool_calls
        return finish in _STORED_FINISH

    async def keep(self, completion: dict[str, Any], info: ReplyInfo,
                   usage: Usage | None = None, raw: bytes | None = None) -> None:
        """Keep a complete reply (non-stream — `raw`, its bytes as received — or assembled from
        a stream) for later hits."""
        if not self.storable(completion):
            return
        usage = usage if usage is not None else info.usage
        body = raw if raw is not None else json.dumps(
            completion, separators=(",", ":"), ensure_ascii=False).encode()
        entry = encode(body, usage, info)
        if len(entry) > self.stage.settings.max_entry_bytes:
            return
        await self.stage.store.put(self.key, entry, self.rule.ttl_s)


def encode(body: bytes, usage: Usage | None, info: ReplyInfo) -> bytes:
    """An entry: one line of JSON saying whose reply it is and what it cost, then the reply's
    bytes as they came (not re-encoded: the body is most of the entry)."""
    meta = {"v": 1, "deployment": info.target.id, "provider": info.target.provider_name,
            "upstream_model": info.target.upstream_model,
            "usage": None if usage is None else [
                usage.input_uncached, usage.cache_read, usage.cache_write, usage.output,
                usage.reasoning]}
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" + body


def decode(raw: bytes) -> Answer | None:
    """A stored entry → the `Answer` it replays (None: unreadable, treated as a miss)."""
    try:
        head, _, rest = raw.partition(b"\n")
        entry = json.loads(head)
        u = entry.get("usage")
        usage = Usage(input_uncached=int(u[0]), cache_read=int(u[1]), cache_write=int(u[2]),
                      output=int(u[3]), reasoning=int(u[4])) if isinstance(u, list) else None
        body = json.loads(rest)
        if not isinstance(body, dict) or entry.get("v") != 1:
            return None
        body.pop("usage", None)  # the hit reports the stored usage itself
        return Answer(body=body, usage=usage, deployment=str(entry["deployment"]),
                      provider=str(entry["provider"]),
                      upstream_model=str(entry["upstream_model"]))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        log.warning("response cache: unreadable entry; serving as a miss")
        return None
