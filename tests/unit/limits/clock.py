"""A clock tests move by hand: monotonic seconds and the UTC wall time advance together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.call import Principal
from gateway.limits.base import Estimate
from gateway.limits.memory import MemoryLimiter
from gateway.policy.tenants import TenantConfig


class Clock:
    def __init__(self, wall: datetime = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)) -> None:
        self.t = 1000.0
        self.now = wall

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.now += timedelta(seconds=seconds)


def tenants(**by_name: dict[str, Any]) -> dict[str, TenantConfig]:
    return {name: TenantConfig.model_validate(cfg) for name, cfg in by_name.items()}


def limiter(clock: Clock, lease_s: float = 600.0, **by_name: dict[str, Any]) -> MemoryLimiter:
    return MemoryLimiter(tenants(**by_name), clock=clock, wall=clock.wall, lease_s=lease_s)


BOT = Principal("acme", "k1", key_name="ci-bot")


def est(prompt: int = 10, completion: int = 0, cost: str = "0") -> Estimate:
    return Estimate(prompt, completion, Decimal(cost))
