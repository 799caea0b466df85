"""What the conversation store keeps per response, and the one error it raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class StoreUnavailable(Exception):
    """The store's database cannot be reached or used right now. The message names the
    database (password redacted) and the driver's error, never stored content."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One Responses API response as the gateway stored it, for one tenant."""

    # The gateway's id, `resp_…` (clients never see an upstream's own id).
    id: str
    tenant: str
    # The public model name the client asked for.
    model: str
    # Epoch seconds.
    created_at: int
    # completed | incomplete | failed
    status: str
    previous_response_id: str | None
    # This request's input as Responses items, exactly as the client sent them.
    input_items: list[dict[str, Any]]
    # The response's output items.
    output: list[dict[str, Any]]
    # The whole Response object the client got (served again by `GET /v1/responses/{id}`).
    response: dict[str, Any]
    # The provider that served it, and that provider's own id when it served it natively.
    provider: str | None = None
    upstream_id: str | None = None
    # Epoch seconds after which it is gone for every read; None: kept until deleted.
    expires_at: int | None = None
