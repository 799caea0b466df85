"""The adapter interface: one class per wire format.

An adapter knows one API and nothing about tenants, limits or routing. It builds the upstream
request from our `Call`, turns the reply (or each SSE chunk) back into the OpenAI shape while
reporting the usage it saw, and classifies errors once, here.

Native mode: when the client came in through an ingress whose format is one of the adapter's
own (`Call.ingress in adapter.native_ingresses`, e.g. `/v1/messages` to an Anthropic backend,
`/v1/responses` to OpenAI), the adapter sends `Call.native_body` (or `Call.native_raw`) and
passes the reply through untranslated (usage still read).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.accounting.usage import Usage
from gateway.call import Call, Endpoint, Ingress
from gateway.policy.models import Deployment, ProviderBase
from gateway.upstream import UpstreamRequest


class ErrorKind(enum.Enum):
    RETRYABLE = "retryable"  # connect, timeout, 429, 5xx: try the next deployment
    CONTEXT_LENGTH = "context_length"  # prompt too long: only context fallbacks
    CLIENT = "client"  # the request itself is wrong: return it, never retry
    CONFIG = "config"  # the gateway's fault (bad upstream key, wrong URL): retry elsewhere, log


@dataclass(frozen=True, slots=True)
class Classified:
    kind: ErrorKind
    status: int
    # Upstream's own message, scrubbed of keys and internal URLs.
    message: str
    code: str | None = None
    type: str | None = None
    param: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: a deployment of a public model."""

    public_model: str
    deployment: Deployment
    # The policy's view of the provider this deployment belongs to.
    provider_name: str

    @property
    def id(self) -> str:
        return self.deployment.id

    @property
    def upstream_model(self) -> str:
        return self.deployment.model


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete (non-streaming) reply in the client's format, with the usage it reported."""

    body: bytes
    usage: Usage | None


class StreamTranslator(Protocol):
    """Fed the upstream's raw stream bytes in arbitrary splits; returns the client's bytes.

    ``feed`` must buffer partial SSE events and emit only whole ones. ``usage`` is the latest
    usage seen (whichever chunk carried it). ``done`` becomes True once the upstream's terminal
    event arrived (OpenAI ``[DONE]``, Anthropic ``message_stop``, Gemini's final chunk).
    ``error`` is set when the upstream sent an in-stream error event (the translator does not
    forward it: the proxy decides what the client sees).
    """

    usage: Usage | None
    done: bool
    error: Classified | None

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """Bytes to send after the upstream ended cleanly (e.g. ``data: [DONE]``)."""
        ...


class Adapter(Protocol):
    """One provider's wire format. Instances are built once per provider at startup."""

    # The client formats this adapter passes through untranslated (`Call.ingress`).
    native_ingresses: frozenset[Ingress]
    # The endpoints its provider can serve: the proxy never sends it another (it skips to the
    # next deployment, or says which endpoint no deployment of the model serves).
    endpoints: frozenset[Endpoint]

    def build_request(self, call: Call, target: Target, native: bool) -> UpstreamRequest: ...

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply: ...

    def stream(self, call: Call, target: Target, native: bool) -> StreamTranslator: ...

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Classified: ...


class AdapterFactory(Protocol):
    def __call__(self, name: str, config: ProviderBase) -> Adapter: ...
