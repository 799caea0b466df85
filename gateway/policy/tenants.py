"""Tenants, their keys, limits and budgets, as declared in the policy."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from gateway.policy.cache import CacheRule
from gateway.policy.compact import Shared

_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def parse_expiry(text: str) -> datetime:
    """`2026-03-31` (valid through that UTC day) or an ISO datetime (naive means UTC).

    A bare date is inclusive because "expires 2026-03-31" reads as "usable on the 31st".
    """
    text = text.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except ValueError:
        raise ValueError(
            f"expires {text!r} is not an ISO date (2026-03-31) or datetime "
            "(2026-03-31T18:00:00Z)"
        ) from None
    except OverflowError:  # 9999-12-31 has no next day
        raise ValueError(f"expires {text!r} is beyond the last date a key can have; "
                         "give an earlier one") from None


class _Strict(Shared):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RateLimits(_Strict):
    rpm: int | None = Field(None, ge=1)
    """Requests per minute."""
    tpm: int | None = Field(None, ge=1)
    """Tokens (prompt + completion) per minute; reserved at admission, settled to actual usage."""
    concurrency: int | None = Field(None, ge=1)
    """Requests in flight at once."""


class Budget(_Strict):
    monthly_usd: Decimal | None = Field(None, ge=0)
    """Spend allowed per calendar month (UTC)."""
    daily_usd: Decimal | None = Field(None, ge=0)
    """Spend allowed per calendar day (UTC)."""
    on_exceed: Literal["block", "allow"] = "block"
    """At 100 %: `block` refuses with `budget_exceeded` (402); `allow` admits and flags."""
    alerts: list[float] = Field(default_factory=lambda: [0.5, 0.9])
    """Fractions of the budget, each greater than 0 and at most 1 (`0.9` is 90 %), at which an
    alert is logged and counted in metrics."""

    @field_validator("alerts")
    @classmethod
    def _alerts_fractions(cls, v: list[float]) -> list[float]:
        # `[50, 90]` (percentages) would otherwise be accepted and never fire.
        for a in v:
            if not 0 < a <= 1:
                raise ValueError(f"alert fractions must be greater than 0 and at most 1 "
                                 f"(got {a:g}); write 0.5 for 50 %")
        return v


class KeyConfig(_Strict):
    id: str
    """Stable key id (appears in the ledger, logs and metrics; never the key itself)."""
    hash: str
    """`sha256:<hex>` of the key. `gateway keys hash KEY` prints it."""
    name: str | None = None
    """Human label."""
    expires: str | None = None
    """ISO date or datetime after which the key is refused."""
    limits: RateLimits | None = None
    """Per-key limits, applied in addition to the tenant's (replaces the tenant's
    `key_limits` for this key)."""

    @field_validator("hash")
    @classmethod
    def _hash_format(cls, v: str) -> str:
        if not _HASH.fullmatch(v):
            raise ValueError(
                "must be `sha256:` and 64 lowercase hex digits; print it with "
                "`gateway keys hash KEY` (never put the key itself in the policy)"
            )
        return v

    @field_validator("expires")
    @classmethod
    def _expires_format(cls, v: str | None) -> str | None:
        if v is not None:
            parse_expiry(v)
        return v


class TenantConfig(_Strict):
    models: list[str] | None = None
    """Public model names this tenant may use; unset allows every model."""
    keys: list[KeyConfig] = Field(default_factory=list)
    """Keys declared in the policy (as hashes). Keys can also be issued at run time."""
    limits: RateLimits = Field(default_factory=RateLimits)
    """Limits for the tenant as a whole."""
    key_limits: RateLimits | None = None
    """Limits applied to each key of this tenant on its own (keys issued at run time
    included); a policy key's own `limits` replace them for that key."""
    model_limits: dict[str, RateLimits] = Field(default_factory=dict)
    """Limits per public model for this tenant."""
    budget: Budget | None = None
    """Spending limit in USD."""
    pricing: dict[str, list[dict[str, object]]] = Field(default_factory=dict)
    """Per-deployment price overrides for this tenant (deployment id → prices)."""
    cache: CacheRule | None = None
    """This tenant's response-cache rule, over its model's (docs/stages.md). Example:
    `{enabled: false}`."""
    priority: int = Field(0, ge=-1000, le=1000)
    """Flow-control class (docs/routing.md, "Flow control"): while a pool is saturated, queued
    requests of a higher priority are served first and a lower one is shed first.
    Example: `priority: 10`."""
    weight: float = Field(1.0, gt=0, le=1000)
    """Flow-control share within its priority class: two backlogged tenants of one class are
    served in the ratio of their weights. Example: `weight: 3`."""

    @model_validator(mode="after")
    def _unique_keys(self) -> TenantConfig:
        ids: dict[str, int] = {}
        hashes: dict[str, int] = {}
        for i, k in enumerate(self.keys):
            if k.id in ids:
                raise ValueError(f"keys[{i}].id {k.id!r} repeats keys[{ids[k.id]}].id; "
                                 "key ids must be unique")
            if k.hash in hashes:
                raise ValueError(f"keys[{i}] has the same hash as keys[{hashes[k.hash]}]; "
                                 "each key must be distinct")
            ids[k.id] = hashes[k.hash] = i
        return self
