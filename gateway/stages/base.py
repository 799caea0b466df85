"""The request-stage seam: one small interface for what runs between the client and the model.

A *stage* (a safety check, the response cache, …) is built from the policy once per `Runtime`
(so a reload rebuilds it) and sees each request it applies to at four points:

```
handle: authenticate → resolve model → admit ──► before()     pass | modify | block | answer
_serve: for each attempt (after routing)  ─────► attempt()    pass | modify | block
        non-stream reply ──────────────────────► reply()      pass | modify | block
        stream ────────────────────────────────► stream() → a watcher fed every event
```

Lifecycle of one request: `Stage.begin(ctx)` returns a per-request `StageRun` (or None: this
stage does not apply to this request, and costs nothing further). The runs of all stages are
called in ascending `Stage.order` at every point — input checks (`ORDER_GUARD_INPUT`) before
the cache lookup (`ORDER_CACHE`), so a blocked prompt is never answered from cache, and on the
way back the guards' output checks see (and may redact or block) a reply before the cache
stores it.

What each point may do:

- **pass**: return None (`before`), return the body/chunk unchanged (`reply`, watcher).
- **modify**: `before`/`attempt` change the request with `set_body` (keeps `call.raw` true);
  `reply` returns other bytes; a watcher returns other bytes than it was fed, or holds bytes
  back (return b"" now, release them with a later chunk, in front of the terminal events).
- **block**: raise `Blocked`. Before the first byte it is a 400 `content_policy_violation`
  in the ingress's error shape, naming the stage (never what matched); admission's
  reservation is released and the ledger gets the request's one record (status 400,
  `error_code: content_policy_violation`). Mid-stream, the stream ends with a
  `finish_reason: "content_filter"` chunk and one SSE error event in the ingress's shape;
  tokens streamed before the block are billed.
- **answer** (`before` only): return an `Answer`; no upstream is called. The proxy replies in
  the shape the client asked for (JSON or SSE replay, through the ingress codec) and the
  ledger records one attempt with outcome `cache_hit` (zero cost, the answer's usage, and the
  cost it saved). The runs with a later order are not called for an answered request.

Nothing here runs when no stage is configured: `Runtime.stages` is then an empty tuple and the
proxy skips every hook on `if stages:`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from gateway.accounting.usage import Usage
from gateway.call import Call, Principal
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.accounting.records import RequestRecord
    from gateway.policy.models import ModelRoute, Policy
    from gateway.providers.base import StreamTranslator, Target

# Stage order: lower runs first at every point. Leave gaps so a third kind fits between.
ORDER_GUARD_INPUT = 100
ORDER_CACHE = 500
ORDER_GUARD_OUTPUT = 100  # output checks share the guards' slot: they run before the cache

# The wire format of what `reply()` and a watcher see. A reply from a backend reached by
# translation is OpenAI-shaped (`call.endpoint`: chat.completion / text_completion …); a
# backend that speaks the ingress natively passes its own format through untranslated.
Wire = Literal["openai", "anthropic", "responses"]


class Blocked(GatewayError):
    """A stage refuses the request (or its reply). The message names the stage and why in
    general terms — never the matched text, which must not reach logs or the client."""

    status = 400
    type = "invalid_request_error"
    code = "content_policy_violation"

    def __init__(self, stage: str, message: str | None = None, *,
                 param: str | None = None, release: bytes = b"") -> None:
        super().__init__(message or f"The request was blocked by the gateway's {stage!r} "
                         "policy check.", param=param)
        self.stage = stage
        # Mid-stream only: whole events of the chunk being fed that still go to the client
        # before the stream ends (the text in front of the forbidden part).
        self.release = release


@dataclass(slots=True)
class StageContext:
    """What a stage sees of one request. Built once per request, after admission."""

    call: Call
    principal: Principal
    record: RequestRecord
    # The policy's route for `call.model` (its per-model stage settings live there).
    route: ModelRoute
    policy: Policy
    # The client's request headers, lower-cased (e.g. `cache-control`).
    headers: dict[str, str]
    # Headers the stages add to the client's response (e.g. `x-gateway-cache`); they are
    # sent on success, on a block and on an answer alike.
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReplyInfo:
    """Which reply a `reply()`/watcher is looking at."""

    target: Target
    # Format of the bytes (see `Wire`); `endpoint` is `call.endpoint` for OpenAI-shaped ones.
    wire: Wire
    endpoint: str
    # The upstream reported usage for a non-stream reply (a stream's is known at its end).
    usage: Usage | None = None
    # A stream's translator: its `usage` is the upstream's count so far (complete by
    # `StreamWatch.finish`, even when the client did not ask for a usage chunk).
    translator: StreamTranslator | None = None


@dataclass(slots=True)
class Answer:
    """A stage's reply in place of an upstream call (a cache hit).

    ``body`` is an OpenAI `chat.completion` object (the internal shape; or the ingress's own
    reply, see ``wire``): the proxy turns it into the client's shape — the ingress codec for
    Anthropic Messages / Responses, an SSE replay with the same chunk shape (and a usage chunk
    when asked) for a stream.
    ``deployment``/``provider``/``upstream_model``: the deployment whose reply this was, so the
    ledger can price what the answer saved.
    """

    body: dict[str, Any]
    usage: Usage | None
    deployment: str
    provider: str
    upstream_model: str
    # Ledger attempt outcome for this answer.
    outcome: Literal["cache_hit"] = "cache_hit"
    # The shape of ``body``: `openai` (the internal chat completion, above), or the ingress's
    # own (`anthropic` message, `responses` Response object) — a native reply, replayed as is.
    wire: Wire = "openai"


class StreamWatch(Protocol):
    """One stream's watcher. ``feed`` gets every run of whole SSE events the upstream
    translator emits (in `ReplyInfo.wire` format, before the ingress codec reshapes them) and
    returns what goes on to the client: the same bytes (pass), other bytes (modify), b"" (hold
    back; release it with a later chunk), or raises `Blocked` (its `release`: the events of
    this chunk that still reach the client before the block ends the stream). The terminal
    events (the chunk with `finish_reason`, the usage chunk, `[DONE]`; Anthropic's
    `message_stop`) are fed like any other: a watcher holding text back releases it in front
    of them. ``finish`` runs once when the stream ended complete (everything fed), before its
    last bytes reach the client: the last chance to raise `Blocked`. A stream that fails, is
    blocked or is left by the client never gets ``finish`` — so a cache stores only there."""

    async def feed(self, chunk: bytes) -> bytes: ...

    async def finish(self) -> None: ...


class StageRun:
    """One stage's work on one request. Subclass and override what the stage needs; the
    defaults pass."""

    # True when `before` completes without suspending (no awaited I/O): the request's
    # admission marker may then wait until after it, and a hit it answers is journaled once,
    # as its final record (`RequestStages.before`). Leave False when unsure.
    never_suspends: bool = False
    # Whether `attempt` / `reply` and `stream` have work on this request: the pipeline calls
    # only those that do (each call is a coroutine made and run, per request). By default,
    # whether the subclass overrides them (`__init_subclass__`); a run may say False for one
    # request (a guard plan without external-only input checks, without output checks).
    checks_attempts: bool = False
    checks_replies: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "checks_attempts" not in cls.__dict__:
            cls.checks_attempts = cls.attempt is not StageRun.attempt
        if "checks_replies" not in cls.__dict__:
            cls.checks_replies = (cls.reply is not StageRun.reply
                                  or cls.stream is not StageRun.stream)

    async def before(self) -> Answer | None:
        """Before routing (after admission). Return an `Answer` to reply without an upstream
        call; raise `Blocked` to refuse; change the request with `set_body`."""
        return None

    async def attempt(self, target: Target) -> None:
        """Before each upstream attempt (fallbacks included), knowing where it goes — for
        rules like "nothing that looks like PII leaves for an external provider". May raise
        `Blocked` or `set_body` (the change stays for later attempts)."""
        return None

    async def reply(self, body: bytes, info: ReplyInfo) -> bytes:
        """A complete non-stream reply, before the ingress codec and before the ledger record
        closes. Return the (possibly modified) bytes or raise `Blocked` (tokens are billed)."""
        return body

    def stream(self, info: ReplyInfo) -> StreamWatch | None:
        """A stream was opened: return a watcher, or None to leave this stream alone."""
        return None


class Stage(Protocol):
    """A configured stage, built once per policy (`gateway.stages.registry`)."""

    name: str
    order: int

    def begin(self, ctx: StageContext) -> StageRun | None:
        """The per-request run, or None when this stage does not apply to this request
        (model, tenant, endpoint): nothing more of this stage runs for it. Must not await."""
        ...


@runtime_checkable
class Reserves(Protocol):
    """A stage that calls models itself on a request's behalf (a guard's classifier). Its
    worst case joins the request's one admission (`Runtime.estimate`): budgets hold its cost
    and token rate limits its tokens, like the request's own, so a tenant out of budget is
    refused before any of it is spent; settlement replaces the hold with the actual usage of
    every attempt of the record (the stage's attempts included)."""

    def reserve(self, call: Call, principal: Principal, prompt_tokens: int,
                max_completion_tokens: int) -> tuple[int, Decimal] | None:
        """(tokens, USD) this stage may spend at most for this request, given the request's
        own estimate; None: nothing. Runs on the hot path: no I/O, no await."""
        ...


def set_body(call: Call, body: dict[str, Any]) -> None:
    """Replace the request's OpenAI-shaped body and keep `call.raw` (what pass-through adapters
    send) in step. For a native ingress (Anthropic Messages, Responses) whose original body is
    forwarded untranslated, a stage that changes content must also change `call.native_body`
    (and `native_raw`) — see `set_native_body`."""
    call.body = body
    call.raw = json.dumps(body, separators=(",", ":")).encode()


def set_native_body(call: Call, body: dict[str, Any]) -> None:
    """Replace the ingress's original body (Anthropic Messages / Responses request). Its raw
    bytes are dropped, so a native adapter serialises the new body (openai_responses.py)."""
    call.native_body = body
    call.native_raw = None
