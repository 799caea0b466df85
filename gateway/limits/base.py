"""The admission interface: one call reserves every limit and budget that applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from gateway.call import Principal

if TYPE_CHECKING:
    from gateway.limits.budget import BudgetStatus


@dataclass(frozen=True, slots=True)
class Estimate:
    """Worst case of one request, known at admission."""

    prompt_tokens: int
    max_completion_tokens: int
    cost_usd: Decimal = Decimal(0)
    # Tokens that request stages may spend on the request's behalf (a guard's classifier
    # calls: gateway/stages/base.py `Reserves`); their cost is in `cost_usd`.
    stage_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.max_completion_tokens + self.stage_tokens


@dataclass(slots=True)
class Reservation:
    """What admission took; settled exactly once when the request ends."""

    principal: Principal
    model: str
    estimate: Estimate
    # x-ratelimit-* headers for the response (admitted requests carry them too).
    headers: dict[str, str] = field(default_factory=dict)
    # Backend-specific handle (the Redis reservation id, the memory buckets…).
    handle: object = None
    settled: bool = False


class Limiter(Protocol):
    async def admit(self, principal: Principal, model: str, estimate: Estimate) -> Reservation:
        """Check and reserve every limit and budget for this request, atomically.

        Raises RateLimited (429, with Retry-After and x-ratelimit-* headers), BudgetExceeded
        (402), or ServiceUnavailable (503, store down under fail_closed).
        """
        ...

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal) -> None:
        """Replace the reservation with the actual usage and release concurrency."""
        ...

    async def budget_status(self, tenant: str) -> list[BudgetStatus]:
        """The tenant's budgets this period: limit, settled spend, holds in flight, reset
        (the admin API's `/admin/budgets/{tenant}`)."""
        ...

    async def close(self) -> None: ...
