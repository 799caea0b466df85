"""OpenTelemetry traces in the GenAI semantic conventions: one server span per request, one
client span per upstream attempt.

    tracing = Tracing.from_policy(policy)          # once, in build_app
    span = tracing.request(call)                   # top of Proxy.handle
    span.attempt(target, provider)                 # each upstream attempt, before sending
    span.finish(record)                            # after settlement: usage, cost, outcome

When `observability.tracing` is false (or no exporter is configured) `request()` returns one
shared no-op span whose methods do nothing, so the hot path pays a method call and a bool test.
Spans are never made current in the context: the proxy passes the span object along instead,
which also works for streams that end in another task.

Conventions: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ — span name
`{gen_ai.operation.name} {gen_ai.request.model}`; token counts are inclusive (input counts
cached tokens, output counts reasoning tokens), with the cache and reasoning parts beside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.call import Call
from gateway.observability.trace_export import make_tracer
from gateway.policy.models import Policy
from gateway.providers.base import Target

log = logging.getLogger("gateway.tracing")

_W3C = TraceContextTextMapPropagator()

# A guard verdict (gateway/guards/verdicts.py) → gen_ai.guardrail.decision.
_GUARD_DECISION = {"pass": "allow", "fail_open": "allow", "flag": "warn", "redact": "modify",
                   "block": "deny", "fail_closed": "deny"}

# Our endpoint → gen_ai.operation.name (well-known values of the conventions).
_OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}

# Provider `kind` → gen_ai.provider.name where the conventions' well-known value differs from
# the kind. OpenAI-compatible APIs report "openai" as the conventions ask of instrumentations
# that only know the wire format; server.address says which service it really was.
_PROVIDER_NAME = {"azure": "azure.ai.openai", "gemini": "gcp.gemini",
                  "openai-compatible": "openai"}

# Request parameters copied to the span when the client sent them as numbers.
_REQUEST_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"),
                   ("max_completion_tokens", "gen_ai.request.max_tokens"),
                   ("temperature", "gen_ai.request.temperature"),
                   ("top_p", "gen_ai.request.top_p"))


class AttemptSpan:
    """One upstream attempt. This base class is the no-op; live spans override it."""

    __slots__ = ()

    def end(self, status: int | None = None, error: str | None = None) -> None:
        """End the attempt now (optional: `RequestSpan.finish` ends attempts left open, with
        the outcome, usage and duration from the ledger record)."""

    def traced_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """`headers` plus `traceparent` for this attempt, as a new dict (adapters share their
        header dicts between requests: never mutate them). The no-op returns `headers` as is.
        A vLLM server with tracing on then joins the trace."""
        return headers


class RequestSpan:
    """One client request. This base class is the no-op; live spans override it."""

    __slots__ = ()

    @property
    def recording(self) -> bool:
        """False for the no-op: callers may skip work done only for the trace."""
        return False

    def attempt(self, target: Target, provider: Any = None) -> AttemptSpan:
        """Open a child span for an upstream attempt. `provider` is the policy's provider
        config (`rt.policy.providers[target.provider_name]`): it gives the provider kind and
        server address."""
        return NOOP_ATTEMPT

    def finish(self, record: RequestRecord | None, *, status: int | None = None,
               error: str | None = None) -> None:
        """End the request span from its ledger record (tenant, deployment, attempts, usage,
        cost, status, error code). Call it after settlement so estimated usage and cost are
        in; the end time comes from `record.latency_ms`, so a late call does not stretch the
        span. With no record (authentication failed) pass `status` and `error` instead.
        Idempotent."""


NOOP_ATTEMPT = AttemptSpan()
NOOP_REQUEST = RequestSpan()


class _Attempt(AttemptSpan):
    __slots__ = ("deployment", "ended", "span", "start_ns")

    def __init__(self, span: Span, deployment: str, start_ns: int) -> None:
        self.span = span
        self.deployment = deployment
        self.start_ns = start_ns
        self.ended = False

    def end(self, status: int | None = None, error: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        _set_outcome(self.span, status, error)
        self.span.end()

    def traced_headers(self, headers: dict[str, str]) -> dict[str, str]:
        out = dict(headers)
        _W3C.inject(out, context=trace.set_span_in_context(self.span))
        return out

    def close_from(self, a: AttemptRecord | None, end_ns: int) -> None:
        """End from the ledger's view of this attempt (or, unmatched, at `end_ns`)."""
        if self.ended:
            return
        self.ended = True
        span = self.span
        if a is None or not span.is_recording():
            span.end(end_time=end_ns)
            return
        attrs: dict[str, Any] = {"gateway.attempt.outcome": a.outcome}
        if a.outcome != "error":
            attrs["gen_ai.response.model"] = a.upstream_model
        if a.usage is not None:
            attrs.update(_usage_attributes(a.usage))
        span.set_attributes(attrs)
        if a.outcome in ("error", "failed_midstream"):
            _set_outcome(span, a.status, a.error or a.outcome)
        elif a.status:
            span.set_attribute("http.response.status_code", a.status)
        span.end(end_time=self.start_ns + int(a.duration_ms * 1_000_000))


class _Request(RequestSpan):
    __slots__ = ("_attempts", "_done", "_op", "_start_ns", "_tracer", "_tracing", "span")

    def __init__(self, tracing: Tracing, tracer: trace.Tracer, span: Span, op: str,
                 start_ns: int) -> None:
        self._tracing = tracing
        self._tracer = tracer
        self.span = span
        self._op = op
        self._start_ns = start_ns
        self._attempts: list[_Attempt] = []
        self._done = False

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    def attempt(self, target: Target, provider: Any = None) -> AttemptSpan:
        if self._done:
            return NOOP_ATTEMPT
        attrs = _provider_attributes(self._tracing.provider_info(target.provider_name, provider))
        attrs.update({"gen_ai.operation.name": self._op,
                      "gen_ai.request.model": target.upstream_model,
                      "gateway.deployment": target.id, "gateway.attempt": len(self._attempts) + 1})
        start = time.time_ns()
        span = self._tracer.start_span(
            f"{self._op} {target.upstream_model}", context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT, attributes=attrs, start_time=start)
        a = _Attempt(span, target.id, start)
        self._attempts.append(a)
        return a

    def finish(self, record: RequestRecord | None, *, status: int | None = None,
               error: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        end = now = time.time_ns()
        if record is not None and record.latency_ms > 0:
            end = min(now, self._start_ns + int(record.latency_ms * 1_000_000))
        for att, rec in _match(self._attempts, record.attempts if record is not None else []):
            att.close_from(rec, end)
        if record is not None and record.guards:
            self._guardrails(record.guards)
        span = self.span
        if not span.is_recording():  # sampled out: nothing to describe
            span.end(end_time=end)
            return
        attrs: dict[str, Any] = {}
        if record is not None:
            attrs = self._describe(record)
            status = record.status or status
            error = record.error_code or error
        if status:
            attrs["http.response.status_code"] = status
        if error:
            attrs["gateway.error_code"] = error
        # A server span fails on 5xx only (a 4xx is the caller's), or when a stream failed
        # after its 200 went out (HTTP semantic conventions, span status).
        failed = (status is not None and status >= 500) or bool(error and (status or 0) < 400)
        if failed:
            attrs["error.type"] = error or str(status)
        span.set_attributes(attrs)
        if failed:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    def _guardrails(self, verdicts: Sequence[Mapping[str, Any]]) -> None:
        """One `apply_guardrail {name}` child span per guard verdict (gateway/guards), timed
        from the verdict; the GenAI conventions' `gen_ai.guardrail.*` attributes."""
        ctx = trace.set_span_in_context(self.span)
        for v in verdicts:
            start = self._start_ns + int(float(v.get("at_ms") or 0) * 1_000_000)
            verdict = str(v.get("verdict"))
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "apply_guardrail",
                "gen_ai.guardrail.name": str(v.get("name")),
                "gen_ai.guardrail.target": "llm_input" if v.get("stage") == "input"
                else "llm_output",
                "gen_ai.guardrail.decision": _GUARD_DECISION.get(verdict, verdict),
                "gateway.guard.verdict": verdict,
            }
            if v.get("labels"):
                attrs["gen_ai.guardrail.findings"] = [str(x) for x in v["labels"]]
            if v.get("deployment"):
                attrs["gateway.deployment"] = str(v["deployment"])
            s = self._tracer.start_span(f"apply_guardrail {v.get('name')}", context=ctx,
                                        kind=SpanKind.INTERNAL, attributes=attrs,
                                        start_time=start)
            if verdict in ("block", "fail_closed"):
                s.set_status(Status(StatusCode.ERROR, "blocked by guard"))
            s.end(end_time=start + int(float(v.get("ms") or 0) * 1_000_000))

    def _describe(self, record: RequestRecord) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gateway.tenant": record.tenant,
            "gateway.key_id": record.key_id,
            "gateway.attempts": len(record.attempts),
        }
        served = _served_by(record.attempts)
        if served is not None:
            attrs.update(_provider_attributes(self._tracing.provider_info(served.provider, None)))
            attrs["gateway.deployment"] = served.deployment
            attrs["gen_ai.response.model"] = served.upstream_model
        usage = _sum_usage(record.attempts)
        if usage is not None:
            attrs.update(_usage_attributes(usage))
        cost = record.cost_usd
        if cost:
            # A float is fine for a trace; the ledger keeps the exact Decimal.
            attrs["gateway.cost_usd"] = float(cost)
        if record.ttft_ms is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = record.ttft_ms / 1000
        if record.client_disconnected:
            attrs["gateway.client_disconnected"] = True
        return attrs


class Tracing:
    """Builds request spans. One per app; `update(policy)` follows reloads.

    `tracer_provider` replaces the exporters from the environment (tests pass one with an
    in-memory exporter); `env` replaces `os.environ` when choosing exporters."""

    def __init__(self, *, tracer_provider: Any = None,
                 env: Mapping[str, str] | None = None) -> None:
        self._given = tracer_provider
        self._env = env
        self._tracer: trace.Tracer | None = None
        self._provider: Any = None  # the SDK TracerProvider we built (flushed at shutdown)
        self._enabled = False
        self._policy: Policy | None = None
        self._providers: dict[str, tuple[str, str | None, int | None]] = {}

    @classmethod
    def from_policy(cls, policy: Policy, *, tracer_provider: Any = None,
                    env: Mapping[str, str] | None = None) -> Tracing:
        """On when `policy.observability.tracing` is true and an exporter is configured
        (`exporters_from_env`); otherwise every request gets the no-op span."""
        t = cls(tracer_provider=tracer_provider, env=env)
        t.update(policy)
        return t

    @property
    def enabled(self) -> bool:
        return self._enabled

    def update(self, policy: Policy) -> None:
        """A reloaded policy: switch tracing on or off, forget provider addresses. The
        exporter is built once, the first time tracing is on."""
        self._policy = policy
        self._providers = {}
        on = policy.observability.tracing
        if on and self._tracer is None:
            self._tracer, self._provider = make_tracer(self._given, self._env)
        self._enabled = on and self._tracer is not None

    def request(self, call: Call, headers: Mapping[str, str] | None = None) -> RequestSpan:
        """A span for this request, child of the caller's W3C `traceparent` when it sent one
        (read from `headers`, else `call.headers`; keys lower-case or case-insensitive)."""
        if not self._enabled:
            return NOOP_REQUEST
        return self._start(call, call.headers if headers is None else headers)

    def _start(self, call: Call, headers: Mapping[str, str]) -> RequestSpan:
        op = _OPERATION.get(call.endpoint, call.endpoint)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.request.model": call.model,
            "gateway.request_id": call.request_id,
            "gateway.stream": call.stream,
            "gateway.ingress": call.ingress,
        }
        body = call.body
        for key, name in _REQUEST_PARAMS:
            v = body.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                attrs[name] = v
        start = time.time_ns()
        assert self._tracer is not None
        span = self._tracer.start_span(f"{op} {call.model}", context=_parent(headers),
                                       kind=SpanKind.SERVER, attributes=attrs, start_time=start)
        return _Request(self, self._tracer, span, op, start)

    def provider_info(self, name: str, provider: Any) -> tuple[str, str | None, int | None]:
        """(gen_ai.provider.name, server.address, server.port) of a provider, cached."""
        info = self._providers.get(name)
        if info is not None:
            return info
        if provider is None and self._policy is not None:
            provider = self._policy.providers.get(name)
        kind = str(getattr(provider, "kind", None) or name)
        host: str | None = None
        port: int | None = None
        base = getattr(provider, "base_url", "") or ""
        if base:
            try:
                parts = urlsplit(base)
                host, port = parts.hostname, parts.port
            except ValueError:
                pass
        info = (_PROVIDER_NAME.get(kind, kind), host, port)
        # A local backend's address is known once it started (the runtime's provider config
        # has it, the policy's not): cache only a complete answer.
        if host:
            self._providers[name] = info
        return info

    def rollout_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """A rollout transition (gateway/rollouts/events.py): a short internal span
        `gateway.rollout` carrying it as a span event. No request is in progress then."""
        if not self._enabled or self._tracer is None:
            return
        span = self._tracer.start_span("gateway.rollout", kind=SpanKind.INTERNAL,
                                       attributes=dict(attributes))
        span.add_event(name, dict(attributes))
        span.end()

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread (app shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
        self._tracer = None
        self._enabled = False


# ---- helpers --------------------------------------------------------------------------------


def _parent(headers: Mapping[str, str]) -> Any:
    tp = headers.get("traceparent")
    if not tp:
        return None  # a new trace
    carrier = {"traceparent": tp}
    ts = headers.get("tracestate")
    if ts:
        carrier["tracestate"] = ts
    # An invalid traceparent yields an empty context: a new trace, as W3C asks.
    return _W3C.extract(carrier)


def _match(spans: Sequence[_Attempt], records: Sequence[AttemptRecord]
           ) -> list[tuple[_Attempt, AttemptRecord | None]]:
    """Pair attempt spans with attempt records in order, by deployment id (a deployment can
    be tried twice, via a fallback model; an attempt cut short may have no record)."""
    out: list[tuple[_Attempt, AttemptRecord | None]] = []
    left = list(records)
    for s in spans:
        for i, r in enumerate(left):
            if r.deployment == s.deployment:
                out.append((s, r))
                del left[: i + 1]
                break
        else:
            out.append((s, None))
    return out


def _served_by(attempts: Sequence[AttemptRecord]) -> AttemptRecord | None:
    """The attempt whose bytes reached the client (the last that was not a clean failure)."""
    for a in reversed(attempts):
        if a.outcome != "error":
            return a
    return None


_SOURCES = ("provider", "provider_partial", "estimated")


def _sum_usage(attempts: Sequence[AttemptRecord]) -> Usage | None:
    """Every token the request consumed, failed mid-stream attempts included (billed, and
    counted by the ledger too)."""
    used = [a.usage for a in attempts if a.usage is not None]
    if not used:
        return None
    if len(used) == 1:
        return used[0]
    return Usage(
        input_uncached=sum(u.input_uncached for u in used),
        cache_read=sum(u.cache_read for u in used),
        cache_write=sum(u.cache_write for u in used),
        output=sum(u.output for u in used),
        reasoning=sum(u.reasoning for u in used),
        # The least exact source of the parts describes the sum.
        source=max((u.source for u in used), key=_SOURCES.index),
    )


def _provider_attributes(info: tuple[str, str | None, int | None]) -> dict[str, Any]:
    system, host, port = info
    # gen_ai.system is the older name of gen_ai.provider.name, still read by older dashboards.
    attrs: dict[str, Any] = {"gen_ai.provider.name": system, "gen_ai.system": system}
    if host:
        attrs["server.address"] = host
        if port:
            attrs["server.port"] = port
    return attrs


def _usage_attributes(u: Usage) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.usage.input_tokens": u.prompt_tokens,
                             "gen_ai.usage.output_tokens": u.completion_tokens,
                             "gateway.usage.source": u.source}
    if u.cache_read:
        attrs["gen_ai.usage.cache_read.input_tokens"] = u.cache_read
    if u.cache_write:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = u.cache_write
    if u.reasoning:
        attrs["gen_ai.usage.reasoning.output_tokens"] = u.reasoning
    return attrs


def _error_type(status: int | None, error: str | None) -> str | None:
    # Low cardinality: the HTTP status, or the reason word (`connect_error`), never the message.
    if status is not None and status >= 400:
        return str(status)
    if error:
        return error.split(":", 1)[0].strip() or "_OTHER"
    return None


def _set_outcome(span: Span, status: int | None, error: str | None) -> None:
    """A client (attempt) span fails on any error or 4xx/5xx answer."""
    if status:
        span.set_attribute("http.response.status_code", status)
    if error is not None or (status is not None and status >= 400):
        span.set_attribute("error.type", _error_type(status, error) or "_OTHER")
        span.set_status(Status(StatusCode.ERROR, error))
