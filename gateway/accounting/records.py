"""What the ledger stores: one record per request, with its upstream attempts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from gateway.accounting.usage import Usage

# ok: the attempt served the client; error: failed before any byte reached the client (fell
# through to the next); failed_midstream: failed after bytes reached the client; cancelled: the
# client went away and the upstream was cancelled; drained: the client went away and the
# upstream was read to its end for its exact usage.
AttemptOutcome = Literal["ok", "error", "failed_midstream", "cancelled", "drained"]


@dataclass(slots=True)
class AttemptRecord:
    deployment: str
    provider: str
    upstream_model: str
    outcome: AttemptOutcome
    status: int | None
    usage: Usage | None
    duration_ms: float
    error: str | None = None
    # SSE content chunks forwarded (~one token each): the output estimate for a stream that
    # ended with no usage from the provider.
    streamed_chunks: int = 0
    # Filled by accounting when the request settles (pricing lives there, not in the proxy).
    cost_usd: Decimal = Decimal(0)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    ts: datetime
    tenant: str
    key_id: str
    model: str
    endpoint: str
    stream: bool
    status: int
    latency_ms: float
    ttft_ms: float | None = None
    error_code: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    # Set when the client disconnected before the response ended.
    client_disconnected: bool = False
    # The parsed request, kept only in memory for estimating usage a provider did not report.
    request_body: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def cost_usd(self) -> Decimal:
        return sum((a.cost_usd for a in self.attempts), Decimal(0))
