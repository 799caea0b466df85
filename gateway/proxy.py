"""The request path, top to bottom. Fallback lives here and only here.

authenticate → resolve model → admit (limits, budget) → plan → try deployments in order
(retry/fallback before the first byte reaches the client) → reply or stream → close.
Every way out of `handle` closes the request's record exactly once (`closing.py`): an
unexpected exception is a 500 with its own record, and releases what admission reserved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from gateway.accounting.records import AttemptOutcome, AttemptRecord, RequestRecord
from gateway.call import Call, Principal
from gateway.closing import Closer
from gateway.errors import (
    ContextLengthExceeded,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.limits.base import Reservation
from gateway.observability.tracing import RequestSpan
from gateway.providers.base import Classified, ErrorKind, StreamTranslator, Target
from gateway.responses import RawResponse, error_response
from gateway.runtime import Deps, Runtime
from gateway.stages.pipeline import RequestStages
from gateway.stages.pipeline import begin as begin_stages
from gateway.streaming import Opened, StreamResponse
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamFailure,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("gateway.proxy")

__all__ = ["Proxy", "StreamResponse"]

# The ledger's `endpoint` of a request that came in through another API than OpenAI's.
_INGRESS_ENDPOINT = {"anthropic": "messages", "responses": "responses"}


class _Retry(Exception):
    """This attempt failed retryably before any byte reached the client (its reason is in the
    attempt's record already). ``caused_by_backend``: a failure no request content can cause
    (connection refused, a 429/503 with Retry-After) — it counts for the circuit breaker
    whoever sent the request (routing/health.py)."""

    def __init__(self, retry_after: float | None = None, caused_by_backend: bool = False) -> None:
        self.retry_after = retry_after
        self.caused_by_backend = caused_by_backend


class Proxy:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.closer = Closer(deps)

    @property
    def draining(self) -> bool:
        return self.closer.draining

    def begin_drain(self, grace_s: float) -> None:
        """Shutdown began (SIGTERM): see `Closer.begin_drain`."""
        self.closer.begin_drain(grace_s)

    # ---- entry point -------------------------------------------------------------------------

    async def handle(self, call: Call) -> RawResponse | StreamResponse:
        rt = self.deps.runtime()
        codec = self.deps.codecs.get(call.ingress)
        t0 = time.monotonic()
        principal: Principal | None = None
        reservation: Reservation | None = None
        record: RequestRecord | None = None
        span = self.deps.tracing.request(call)
        task = asyncio.current_task()
        if task is not None:
            self.closer.running.add(task)
        try:
            principal = self.deps.auth.authenticate(call.api_key)
            record = self._record(call, principal)
            route = rt.policy.models.get(call.model)
            if route is None:
                raise ModelNotFound(self._unknown_model_message(rt, call.model, principal))
            self.deps.auth.check_model(principal, call.model, rt.policy.models)
            if codec is not None:
                # The ingress resolves what it needs before admission (Responses: the
                # conversation a `previous_response_id` continues, so the estimate counts it).
                # Something to await only when that needs I/O (a store lookup).
                pending = codec.prepare(call, principal)
                if pending is not None:
                    await pending
                record.request_body = call.body
            if self.deps.limiter is not None and rt.policy.tenants:
                reservation = await self.deps.limiter.admit(
                    principal, call.model, rt.estimate(call, principal))
            stages = begin_stages(rt, call, principal, record) if rt.stages else None
            if stages is None:
                self.deps.settler.admitted(record)
            elif (answered := await stages.before(self.closer, reservation, codec, t0, span,
                                                  partial(self.deps.settler.admitted, record))
                  ) is not None:
                return answered  # a stage answered (cache hit): its record is closed
            return await self._serve(rt, call, principal, record, reservation, codec, t0, span,
                                     stages)
        except GatewayError as e:
            return await self._refused(rt, call, e, record, reservation, codec, t0, span)
        except asyncio.CancelledError:
            if not self.closer.draining or task is None:
                if record is not None:
                    self._failed(record, t0, 499, "cancelled")
                    self.closer.close_now(reservation, record, span)
                raise
            # The shutdown deadline is near: answer rather than let the server cut us off.
            task.uncancel()
            return await self._refused(rt, call, ServiceUnavailable(
                "The gateway is shutting down; retry the request.", code="gateway_shutdown",
                headers={"Retry-After": "1"}), record, reservation, codec, t0, span)
        except Exception as e:
            log.exception("unexpected error serving request %s",
                          record.request_id if record else call.request_id)
            if record is not None:
                record.error_class = type(e).__qualname__
            return await self._refused(rt, call, GatewayError(
                "The gateway hit an internal error; it has been logged (request id "
                f"{call.request_id}). Retry the request.", code="internal_error"),
                record, reservation, codec, t0, span)
        finally:
            if task is not None:
                self.closer.running.discard(task)

    async def _refused(self, rt: Runtime, call: Call, e: GatewayError,
                       record: RequestRecord | None, reservation: Reservation | None, codec: Any,
                       t0: float, span: RequestSpan) -> RawResponse:
        """The request ends with an error response: close its record first."""
        if record is not None:
            self._failed(record, t0, e.status, e.code)
            await self.closer.close(reservation, record, span)
        else:
            span.finish(None, status=e.status, error=e.code)
        label = call.model if call.model in rt.policy.models else "_unknown"
        self.deps.metrics.request_done(label, e.status, time.monotonic() - t0, None)
        headers = dict(reservation.headers) if reservation else {}
        headers.update(e.headers)
        headers.update(self._ids(call))
        return error_response(e, headers, codec)

    @staticmethod
    def _failed(record: RequestRecord, t0: float, status: int, code: str | None) -> None:
        record.status = status
        record.error_code = code
        record.latency_ms = (time.monotonic() - t0) * 1000

    @staticmethod
    def _ids(call: Call) -> dict[str, str]:
        """The client's own id echoed (or a fresh one), and the ledger's key for this request."""
        return {"x-request-id": call.client_request_id or call.request_id,
                "x-gateway-request-id": call.request_id}

    def _record(self, call: Call, principal: Principal) -> RequestRecord:
        return RequestRecord(
            request_id=call.request_id, ts=datetime.now(UTC), tenant=principal.tenant,
            key_id=principal.key_id, model=call.model,
            endpoint=call.endpoint if call.ingress == "openai" else _INGRESS_ENDPOINT[call.ingress],
            # Until the request ends, the record reads as it would if the gateway died: the
            # journal's marker (journal.py) is this record as it stands.
            stream=call.stream, status=500, latency_ms=0.0, error_code="gateway_interrupted",
            request_body=call.body, client_request_id=call.client_request_id,
        )

    def _unknown_model_message(self, rt: Runtime, model: str, principal: Principal) -> str:
        names = [m for m in rt.policy.models if principal.may_use(m)]
        return (f"The model {model!r} does not exist or you do not have access to it. "
                f"Available: {', '.join(sorted(names)) or 'none'}.")

    # ---- attempts ----------------------------------------------------------------------------

    async def _serve(self, rt: Runtime, call: Call, principal: Principal, record: RequestRecord,
                     reservation: Reservation | None, codec: Any, t0: float, span: RequestSpan,
                     stages: RequestStages | None = None) -> RawResponse | StreamResponse:
        allowed = principal.allowed_models
        plan = rt.router.plan(call, allowed=allowed)
        record.rollout_arm = plan.arm  # the rollout measures this request on its arm
        record.route_reason = plan.reason  # a spill decision, kept in the ledger
        queue = list(plan.attempts)
        skipped = list(plan.skipped)
        context_switched = False
        refused: str | None = None
        while queue and len(record.attempts) < plan.max_attempts:
            target = queue.pop(0)
            adapter = rt.adapters[target.provider_name]
            if call.endpoint not in adapter.endpoints:
                kind = rt.policy.providers[target.provider_name].kind
                refused = refused or _cannot_serve(call, target, kind)
                continue
            # Whether this backend speaks the client's API itself: read once per attempt.
            native = _native(call, adapter)
            if call.translation_error is not None and not native:
                refused = call.translation_error  # only a backend speaking it natively can
                continue
            if call.translate is not None and not native:
                call.translate(call)
                record.request_body = call.body  # what estimates of missing usage read
            if stages is not None and stages.attempting:
                await stages.attempt(target)  # may block or redact for this destination
            try:
                result = await self._attempt(rt, call, target, record, span, native)
            except _Retry as r:
                rt.health.failure(target.id, r.retry_after, caller=principal.tenant,
                                  caused_by_backend=r.caused_by_backend)
                continue
            except _ContextTooLong as c:
                if plan.context_fallbacks and not context_switched:
                    context_switched = True
                    switched = rt.router.plan(call, plan.context_fallbacks, allowed=allowed,
                                              require=False)
                    queue = list(switched.attempts)
                    skipped += switched.skipped
                    if queue:
                        continue
                raise ContextLengthExceeded(c.message + _skipped_note(skipped),
                                            param="messages") from None
            headers = self._ids(call)
            headers["x-gateway-deployment"] = target.id
            # A stream's serving attempt is recorded when it ends, so count it here.
            headers["x-gateway-attempts"] = str(len(record.attempts) + isinstance(result, Opened))
            if reservation is not None:
                headers.update(reservation.headers)
            if stages is not None:
                headers.update(stages.headers)
            # A native reply (Anthropic ingress → Anthropic backend) is already in the
            # client's format; anything else is OpenAI-shaped and goes through the codec.
            if isinstance(result, Opened):
                return StreamResponse(self.closer, call, record, reservation, result, codec,
                                      headers, t0, translate=not native, span=span,
                                      watch=None if stages is None else stages.stream(
                                          target, native, result.translator))
            body, usage_ok = result
            if plan.arm is not None:  # the rollout's length gate (JSON escapes inner quotes)
                record.finish_length = body.find(b'"length"') >= 0  # see sse.has_any
            if stages is not None:
                body = await stages.reply(body, target, native)  # may redact or block
            # A reply without usage is estimated from its text (rare: most providers report).
            text = None if usage_ok or native else _reply_text(body)
            if codec is not None:
                if not native:
                    body = codec.reply(body, call)
                codec.completed(call, target, record.tenant)
            record.status = 200
            record.error_code = None
            record.latency_ms = (time.monotonic() - t0) * 1000
            await self.closer.close(reservation, record, span, text)
            self.deps.metrics.request_done(call.model, 200, time.monotonic() - t0, None)
            return RawResponse(200, body, headers)
        if refused is not None and not record.attempts:
            raise InvalidRequest(refused, param="model", code="unsupported_on_backend")
        # Every failed attempt is in the record with its reason: the message names them all.
        detail = "; ".join(f"{a.deployment}: {a.error}" for a in record.attempts if a.error)
        raise UpstreamError(
            f"All {len(record.attempts)} attempt(s) for model {call.model!r} failed ({detail})."
            f"{_skipped_note(skipped)} Retry later, or check /ready for deployment health.",
            code="all_deployments_failed",
        )

    async def _attempt(self, rt: Runtime, call: Call, target: Target, record: RequestRecord,
                       span: RequestSpan, native: bool) -> tuple[bytes, bool] | Opened:
        adapter = rt.adapters[target.provider_name]
        provider = rt.policy.providers[target.provider_name]
        timeouts = target.deployment.timeouts or provider.timeouts
        req = adapter.build_request(call, target, native)
        # Ended by span.finish(record), from the attempt's ledger record.
        req.headers = span.attempt(target, provider).traced_headers(req.headers)
        signals = self.deps.signals
        tid = target.id  # a property building its text each time: once per attempt
        signals.begin(tid)
        started = time.monotonic()
        ok = False
        ttft: float | None = None
        try:
            try:
                resp = await rt.clients[target.provider_name].send(req, timeouts)
            except UpstreamFailure as e:
                self._attempt_failed(record, target, None, f"{e.reason}: {e}", started)
                raise _Retry(caused_by_backend=isinstance(e, UpstreamConnectError)) from None
            if resp.status >= 400:
                try:
                    body = await resp.read()
                except UpstreamFailure:
                    body = b""
                resp.release()
                self._classified(rt, record, target, adapter.classify(resp.status, body,
                                                                      resp.headers), started)
            if not call.stream:
                try:
                    body = await resp.read()
                except UpstreamFailure as e:
                    resp.close()
                    self._attempt_failed(record, target, resp.status, f"{e.reason}: {e}", started)
                    raise _Retry() from None
                resp.release()
                reply = adapter.parse_reply(call, target, body, native)
                ttft = time.monotonic() - started
                record.attempts.append(AttemptRecord(
                    tid, target.provider_name, target.upstream_model, "ok", 200,
                    reply.usage, ttft * 1000))
                rt.health.success(tid)
                ok = True
                return reply.body, reply.usage is not None
            opened = await self._open_stream(rt, call, target, record, adapter, resp, native,
                                             timeouts.first_byte, started, provider)
            ttft = opened.ttft
            ok = True
            return opened
        finally:
            # Streams report their end to signals when they finish; see StreamResponse.
            if not (ok and call.stream):
                signals.end(tid, ok, time.monotonic() - started, ttft)

    async def _open_stream(self, rt: Runtime, call: Call, target: Target, record: RequestRecord,
                           adapter: Any, resp: UpstreamResponse, native: bool, first_byte: float,
                           started: float, provider: Any) -> Opened:
        translator: StreamTranslator = adapter.stream(call, target, native)
        first = b""
        chunks = resp.chunks()
        try:
            async with asyncio.timeout(first_byte):
                async for data in chunks:
                    first += translator.feed(data)
                    if first or translator.error is not None or translator.done:
                        break
        except (UpstreamFailure, TimeoutError) as e:
            resp.close()
            reason = f"timeout: no first token within {first_byte:g} s" \
                if isinstance(e, TimeoutError | UpstreamTimeout) else f"{type(e).__name__}: {e}"
            self._attempt_failed(record, target, resp.status, reason, started,
                                 translator.usage)
            raise _Retry() from None
        if translator.error is not None:
            resp.close()
            self._classified(rt, record, target, translator.error, started, translator.usage)
        if not first and not translator.done:
            resp.close()
            self._attempt_failed(record, target, resp.status,
                                 "the stream ended before any data", started, translator.usage)
            raise _Retry()
        rt.health.success(target.id)
        return Opened(target, resp, translator, first, started, time.monotonic() - started,
                      provider.drain_on_disconnect)

    def _attempt_failed(self, record: RequestRecord, target: Target, status: int | None,
                        reason: str, started: float, usage: Any = None,
                        outcome: AttemptOutcome = "error") -> None:
        if usage is not None:
            usage = usage.with_source("provider_partial")
        record.attempts.append(AttemptRecord(
            target.id, target.provider_name, target.upstream_model, outcome, status, usage,
            (time.monotonic() - started) * 1000, error=reason))
        self.deps.metrics.upstream_error(target.id, reason.split(":", 1)[0])

    def _classified(self, rt: Runtime, record: RequestRecord, target: Target, c: Classified,
                    started: float, usage: Any = None) -> None:
        """Record a classified upstream error and raise what the loop should do with it."""
        self._attempt_failed(record, target, c.status, f"HTTP {c.status}: {c.message}", started,
                             usage)
        if c.kind is ErrorKind.RETRYABLE:
            # A 429/503 saying when to come back is the backend's state, not the request's.
            told = c.status in (429, 503) and c.retry_after is not None
            raise _Retry(c.retry_after if c.status in (429, 503) else None,
                         caused_by_backend=told)
        if c.kind is ErrorKind.CONFIG:
            log.error("deployment %s rejected the gateway's credentials or configuration "
                      "(HTTP %s): %s", target.id, c.status, c.message)
            raise _Retry(caused_by_backend=True)
        rt.health.release_probe(target.id)
        if c.kind is ErrorKind.CONTEXT_LENGTH:
            raise _ContextTooLong(c.message)
        raise GatewayError(c.message, status=c.status, type=c.type or "invalid_request_error",
                           code=c.code, param=c.param)

    # ---- shutdown ----------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        self.closer.spawn(coro)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for settlements and drains still running (shutdown)."""
        await self.closer.drain(timeout)


def _cannot_serve(call: Call, target: Target, kind: str) -> str:
    return (f"Model {call.model!r} has no deployment that serves /v1/{call.endpoint}: "
            f"{target.id!r} is on a `kind: {kind}` provider, which cannot serve it "
            "(docs/providers.md lists which kinds serve which endpoints).")


def _skipped_note(skipped: list[str] | tuple[str, ...]) -> str:
    if not skipped:
        return ""
    names = ", ".join(repr(m) for m in skipped)
    return (f" Fallback {names} was skipped: this key's tenant may not use "
            f"{'that model' if len(skipped) == 1 else 'those models'}.")


def _native(call: Call, adapter: Any) -> bool:
    """The client came in through one of the adapter's own formats (/v1/messages → Anthropic,
    /v1/responses → OpenAI): the request and reply pass through untranslated."""
    return call.ingress != "openai" and call.ingress in adapter.native_ingresses


class _ContextTooLong(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def _reply_text(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
        parts = []
        for c in obj.get("choices") or []:
            msg = c.get("message") or {}
            parts.append(str(msg.get("content") or c.get("text") or ""))
        return "".join(parts)
    except (ValueError, AttributeError, TypeError):
        return None
