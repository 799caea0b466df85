"""Plain data that flows down the request path: the call, and who is making it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Which client-facing API a call came in through. Adapters translate from the OpenAI shape;
# "messages" (Anthropic ingress) is converted to the OpenAI shape at the edge, and kept as the
# ingress so an Anthropic backend can take the original body untranslated.
Endpoint = Literal["chat", "completions", "embeddings"]
Ingress = Literal["openai", "anthropic"]


@dataclass(slots=True)
class Call:
    """One client request, parsed once at the edge.

    ``body`` is the OpenAI-shaped JSON object; ``raw`` the bytes the client sent (for pass-through
    adapters that do not need to re-serialise when nothing changes).
    """

    endpoint: Endpoint
    model: str
    body: dict[str, Any]
    raw: bytes
    stream: bool
    request_id: str
    api_key: str | None = None
    # The client asked for stream usage itself (stream_options.include_usage); when it did not,
    # the gateway still asks upstream and strips the usage chunk before it reaches the client.
    client_include_usage: bool = False
    ingress: Ingress = "openai"
    # The original Anthropic Messages body for the anthropic ingress (pass-through to Anthropic).
    native_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Session affinity key (OpenAI `user`, or x-session-id header) for prefix-affinity routing.
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    tenant: str
    key_id: str
    # None: every model in the policy.
    allowed_models: frozenset[str] | None = None
    key_name: str | None = None

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


ANONYMOUS = Principal(tenant="default", key_id="anonymous")
