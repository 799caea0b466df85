"""`cache:` — the exact response cache (docs/stages.md): where entries live, and which requests
are cached. The top-level section sets the store and the default rule; a model's `cache:` and a
tenant's `cache:` override the rule field by field (tenant over model over top level).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# Request fields that never change the answer: left out of the cache key.
DEFAULT_IGNORED = ("user", "stream", "stream_options", "metadata", "store", "service_tier",
                   "parallel_tool_calls", "prompt_cache_key", "safety_identifier")


class CacheRule(_Strict):
    """Which requests are cached, and for how long. Every field unset inherits (a tenant's
    rule from the model's, a model's from the top-level `cache:`)."""

    enabled: bool | None = None
    """Cache this model's (or tenant's) replies. A top-level `cache:` section turns the cache
    on for every chat model; `enabled: false` on a model or tenant turns it off there, and
    `enabled: true` on a model turns it on without a top-level section. Example: `false`."""
    ttl_s: float | None = Field(None, gt=0, le=30 * 86400)
    """Seconds an entry is served after it was stored (default 300). Example: `3600`."""
    deterministic_only: bool | None = None
    """Cache only requests whose answer is reproducible: `temperature: 0` or a `seed` (default
    true). `false` caches sampled answers too — a hit then always returns the same sample.
    Example: `false`."""
    cache_tool_calls: bool | None = None
    """Cache replies that call tools (default false: a tool call usually needs fresh data, so
    it is asked again). Example: `true`."""
    share_across_tenants: bool | None = None
    """Let tenants share entries (default false: the key includes the tenant, so tenant B never
    gets tenant A's answer). Set it on the model (or top level) for public, tenant-neutral
    content only. Example: `true`."""
    ignore_fields: list[str] | None = None
    """Request fields left out of the key because they do not change the answer (default:
    `user`, `stream`, `stream_options`, `metadata`, `store`, `service_tier`,
    `parallel_tool_calls`, `prompt_cache_key`, `safety_identifier`). Example: `[user, metadata]`."""


class CacheSettings(CacheRule):
    """The top-level `cache:` section: the store, and the default rule for every model."""

    backend: Literal["memory", "redis"] = "memory"
    """`memory` (this process only; the embedded default) or `redis` (at `state.redis_url`,
    shared by every replica). Example: `redis`."""
    max_entries: int = Field(10_000, ge=1, le=100_000_000)
    """Entries kept in memory before the least recently used go (the `memory` backend; Redis
    bounds itself with the TTL and its own `maxmemory`). Example: `50000`."""
    max_entry_bytes: int = Field(1024 * 1024, ge=256, le=64 * 1024 * 1024)
    """Replies larger than this (serialised) are not stored. Example: `262144`."""
    key_prefix: str = "cache:"
    """Redis key prefix, after `state.key_prefix`. Example: `respcache:`."""


class EffectiveRule(_Strict):
    """A rule with every field resolved (what the cache stage uses per request)."""

    enabled: bool
    ttl_s: float
    deterministic_only: bool
    cache_tool_calls: bool
    share_across_tenants: bool
    ignore_fields: tuple[str, ...]


def resolve(*rules: CacheRule | None, default_enabled: bool) -> EffectiveRule:
    """Merge rules field by field, later ones winning (top level, model, tenant)."""
    out: dict[str, object] = {"enabled": default_enabled, "ttl_s": 300.0,
                              "deterministic_only": True, "cache_tool_calls": False,
                              "share_across_tenants": False, "ignore_fields": DEFAULT_IGNORED}
    for rule in rules:
        if rule is None:
            continue
        for name in CacheRule.model_fields:
            value = getattr(rule, name)
            if value is not None:
                out[name] = tuple(value) if name == "ignore_fields" else value
    return EffectiveRule.model_validate(out)
