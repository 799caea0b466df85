"""The request path, top to bottom. Fallback lives here and only here.

authenticate → resolve model → admit (limits, budget) → plan → try deployments in order
(retry/fallback before the first byte reaches the client) → reply or stream → settle.
Settlement (limits, cost, ledger) is handed off as a task: the client never waits on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.accounting.records import AttemptOutcome, AttemptRecord, RequestRecord
from gateway.call import Call, Principal
from gateway.errors import (
    ContextLengthExceeded,
    GatewayError,
    ModelNotFound,
    UpstreamError,
    sse_error_event,
)
from gateway.limits.base import Reservation
from gateway.observability.tracing import RequestSpan
from gateway.providers.base import Classified, ErrorKind, StreamTranslator, Target
from gateway.responses import RawResponse, error_response
from gateway.runtime import Deps, Runtime
from gateway.upstream import UpstreamFailure, UpstreamResponse, UpstreamTimeout

log = logging.getLogger("gateway.proxy")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class _Retry(Exception):
    """This attempt failed retryably before any byte reached the client (its reason is in the
    attempt's record already)."""

    def __init__(self, retry_after: float | None = None) -> None:
        self.retry_after = retry_after


@dataclass(slots=True)
class _Open:
    """A stream whose first bytes have arrived: from here on the status is fixed."""

    target: Target
    resp: UpstreamResponse
    translator: StreamTranslator
    first: bytes
    started: float
    ttft: float
    drain: bool


class Proxy:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- entry point -------------------------------------------------------------------------

    async def handle(self, call: Call) -> RawResponse | StreamResponse:
        rt = self.deps.runtime()
        codec = self.deps.codecs.get(call.ingress)
        t0 = time.monotonic()
        ts = datetime.now(UTC)
        principal: Principal | None = None
        reservation: Reservation | None = None
        record: RequestRecord | None = None
        span = self.deps.tracing.request(call)
        try:
            principal = self.deps.auth.authenticate(call.api_key)
            record = self._record(call, principal, ts)
            route = rt.policy.models.get(call.model)
            if route is None:
                raise ModelNotFound(self._unknown_model_message(rt, call.model, principal))
            self.deps.auth.check_model(principal, call.model, rt.policy.models)
            if self.deps.limiter is not None and rt.policy.tenants:
                reservation = await self.deps.limiter.admit(
                    principal, call.model, rt.estimate(call, principal))
            return await self._serve(rt, call, record, reservation, codec, t0, span)
        except GatewayError as e:
            if record is not None:
                record.status = e.status
                record.error_code = e.code
                record.latency_ms = (time.monotonic() - t0) * 1000
                self._settle(reservation, record, span=span)
            else:
                span.finish(None, status=e.status, error=e.code)
            label = call.model if call.model in rt.policy.models else "_unknown"
            self.deps.metrics.request_done(label, e.status, time.monotonic() - t0, None)
            headers = dict(reservation.headers) if reservation else {}
            headers.update(e.headers)
            headers["x-request-id"] = call.request_id
            return error_response(e, headers, codec)

    def _record(self, call: Call, principal: Principal, ts: datetime) -> RequestRecord:
        return RequestRecord(
            request_id=call.request_id, ts=ts, tenant=principal.tenant, key_id=principal.key_id,
            model=call.model, endpoint=call.endpoint if call.ingress == "openai" else "messages",
            stream=call.stream, status=0, latency_ms=0.0, request_body=call.body,
        )

    def _unknown_model_message(self, rt: Runtime, model: str, principal: Principal) -> str:
        names = [m for m in rt.policy.models if principal.may_use(m)]
        return (f"The model {model!r} does not exist or you do not have access to it. "
                f"Available: {', '.join(sorted(names)) or 'none'}.")

    # ---- attempts ----------------------------------------------------------------------------

    async def _serve(self, rt: Runtime, call: Call, record: RequestRecord,
                     reservation: Reservation | None, codec: Any, t0: float, span: RequestSpan
                     ) -> RawResponse | StreamResponse:
        plan = rt.router.plan(call)
        queue = list(plan.attempts)
        context_switched = False
        while queue and len(record.attempts) < plan.max_attempts:
            target = queue.pop(0)
            try:
                result = await self._attempt(rt, call, target, record, span)
            except _Retry as r:
                rt.health.failure(target.id, r.retry_after)
                continue
            except _ContextTooLong as c:
                if plan.context_fallbacks and not context_switched:
                    context_switched = True
                    queue = list(rt.router.plan(call, plan.context_fallbacks).attempts)
                    continue
                raise ContextLengthExceeded(c.message, param="messages") from None
            headers = {
                "x-request-id": call.request_id,
                "x-gateway-deployment": target.id,
                # A stream's serving attempt is recorded when it ends, so count it here.
                "x-gateway-attempts": str(len(record.attempts) + isinstance(result, _Open)),
            }
            if reservation is not None:
                headers.update(reservation.headers)
            # A native reply (Anthropic ingress → Anthropic backend) is already in the
            # client's format; anything else is OpenAI-shaped and goes through the codec.
            native = _native(call, rt.adapters[target.provider_name])
            if isinstance(result, _Open):
                return StreamResponse(self, rt, call, record, reservation, result, codec,
                                      headers, t0, translate=not native, span=span)
            body, usage_ok = result
            # A reply without usage is estimated from its text (rare: most providers report).
            text = None if usage_ok or native else _reply_text(body)
            if codec is not None and not native:
                body = codec.reply(body, call)
            record.status = 200
            record.latency_ms = (time.monotonic() - t0) * 1000
            self._settle(reservation, record, text, span)
            self.deps.metrics.request_done(call.model, 200, time.monotonic() - t0, None)
            return RawResponse(200, body, headers)
        # Every failed attempt is in the record with its reason: the message names them all.
        detail = "; ".join(f"{a.deployment}: {a.error}" for a in record.attempts if a.error)
        raise UpstreamError(
            f"All {len(record.attempts)} attempt(s) for model {call.model!r} failed ({detail}). "
            "Retry later, or check /ready for deployment health.",
            code="all_deployments_failed",
        )

    async def _attempt(self, rt: Runtime, call: Call, target: Target, record: RequestRecord,
                       span: RequestSpan) -> tuple[bytes, bool] | _Open:
        adapter = rt.adapters[target.provider_name]
        provider = rt.policy.providers[target.provider_name]
        timeouts = target.deployment.timeouts or provider.timeouts
        native = _native(call, adapter)
        req = adapter.build_request(call, target, native)
        # Ended by span.finish(record), from the attempt's ledger record.
        req.headers = span.attempt(target, provider).traced_headers(req.headers)
        signals = self.deps.signals
        signals.begin(target.id)
        started = time.monotonic()
        ok = False
        ttft: float | None = None
        try:
            try:
                resp = await rt.clients[target.provider_name].send(req, timeouts)
            except UpstreamFailure as e:
                self._attempt_failed(record, target, None, f"{e.reason}: {e}", started)
                raise _Retry() from None
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
                    target.id, target.provider_name, target.upstream_model, "ok", 200,
                    reply.usage, ttft * 1000))
                rt.health.success(target.id)
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
                signals.end(target.id, ok, time.monotonic() - started, ttft)

    async def _open_stream(self, rt: Runtime, call: Call, target: Target, record: RequestRecord,
                           adapter: Any, resp: UpstreamResponse, native: bool, first_byte: float,
                           started: float, provider: Any) -> _Open:
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
        return _Open(target, resp, translator, first, started, time.monotonic() - started,
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
            raise _Retry(c.retry_after if c.status in (429, 503) else None)
        if c.kind is ErrorKind.CONFIG:
            log.error("deployment %s rejected the gateway's credentials or configuration "
                      "(HTTP %s): %s", target.id, c.status, c.message)
            raise _Retry()
        rt.health.release_probe(target.id)
        if c.kind is ErrorKind.CONTEXT_LENGTH:
            raise _ContextTooLong(c.message)
        raise GatewayError(c.message, status=c.status, type=c.type or "invalid_request_error",
                           code=c.code, param=c.param)

    # ---- settlement --------------------------------------------------------------------------

    def _settle(self, reservation: Reservation | None, record: RequestRecord,
                completion_text: str | None = None, span: RequestSpan | None = None) -> None:
        """Hand the finished request to accounting without making the client wait."""
        task = asyncio.get_running_loop().create_task(self._settle_and_trace(
            reservation, record, completion_text, span))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_and_trace(self, reservation: Reservation | None, record: RequestRecord,
                                completion_text: str | None, span: RequestSpan | None) -> None:
        await self.deps.settler.settle(reservation, record, body=record.request_body,
                                       completion_text=completion_text)
        if span is not None:
            # After settlement: the span carries the settled usage (estimates) and cost.
            span.finish(record)
        request_log = self.deps.request_log
        if request_log.enabled() and self.deps.runtime().policy.observability.log_requests:
            request_log.emit(record)

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for settlements and drains still running (shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _native(call: Call, adapter: Any) -> bool:
    """The client came in through the adapter's own format (e.g. /v1/messages → Anthropic):
    the request and reply pass through untranslated."""
    return call.ingress != "openai" and adapter.native_ingress == call.ingress


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


async def _read_to_eof(resp: UpstreamResponse) -> None:
    """After the terminal event, read the (normally empty) rest so the connection can go back
    to the pool; an upstream that keeps talking after [DONE] is cut off after a second."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in resp.chunks():
                pass
    except (UpstreamFailure, TimeoutError):
        resp.close()


class StreamResponse:
    """An ASGI response that pumps an open upstream stream to the client.

    It watches for the client going away itself (rather than relying on a send failing later)
    so the upstream is cancelled — or drained, by policy — at once, and the request is settled
    however the stream ends: done, upstream failure, or disconnect.
    """

    def __init__(self, proxy: Proxy, rt: Runtime, call: Call, record: RequestRecord,
                 reservation: Reservation | None, opened: _Open, codec: Any,
                 headers: dict[str, str], t0: float, translate: bool = True,
                 span: RequestSpan | None = None) -> None:
        self.proxy = proxy
        self.span = span
        self.translate = translate
        self.rt = rt
        self.call = call
        self.record = record
        self.reservation = reservation
        self.o = opened
        self.codec = codec
        self.headers = headers
        self.t0 = t0
        self.gone = False
        self.complete = False
        self._outcome: AttemptOutcome = "failed_midstream"

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    # uvicorn also reports "disconnect" once the response is complete.
                    if not self.complete:
                        self.gone = True
                        task.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._pump(send)
        except asyncio.CancelledError:
            if not self.gone:
                raise
            task.uncancel()
        except OSError:
            self.gone = True
        finally:
            watcher.cancel()
            self._finish()

    async def _pump(self, send: Send) -> None:
        o = self.o
        tr = o.translator
        codec_tr = self.codec.stream(self.call) \
            if self.codec is not None and self.translate else None
        outcome: AttemptOutcome = "ok"
        error: GatewayError | None = None

        async def out(data: bytes, more: bool = True) -> None:
            if codec_tr is not None:
                data = codec_tr.feed(data)
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": more})

        try:
            await out(o.first)
            if not tr.done:
                async for data in o.resp.chunks():
                    chunk = tr.feed(data)
                    if tr.error is not None:
                        error = UpstreamError(f"upstream {o.target.id} failed mid-stream: "
                                              f"{tr.error.message}", code="upstream_stream_error")
                        break
                    if chunk:
                        await out(chunk)
                    if tr.done:
                        break
                else:
                    if not tr.done:
                        error = UpstreamError(f"upstream {o.target.id} ended the stream before "
                                              "it was complete", code="upstream_stream_truncated")
        except UpstreamFailure as e:
            error = UpstreamError(f"upstream {o.target.id} failed mid-stream: {e}",
                                  code="upstream_stream_error")
        if error is not None:
            outcome = "failed_midstream"
            self.record.error_code = error.code
            self.proxy.deps.metrics.upstream_error(o.target.id, "midstream")
            body = self.codec.error_event(error) if self.codec is not None \
                else sse_error_event(error)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        else:
            tail = tr.finish()
            if codec_tr is not None:
                tail = codec_tr.feed(tail) + codec_tr.finish()
            if tail:
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        self._outcome = outcome
        self.complete = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if error is None:
            await _read_to_eof(o.resp)

    def _finish(self) -> None:
        """Runs once, however the stream ended; never awaits (it may run while cancelled)."""
        o = self.o
        outcome = self._outcome
        if self.gone and not self.complete:
            outcome = "drained" if o.drain else "cancelled"
            self.record.client_disconnected = True
        elapsed = time.monotonic() - o.started
        self.proxy.deps.signals.end(o.target.id, outcome == "ok", elapsed, o.ttft)
        self.record.ttft_ms = (o.ttft + (o.started - self.t0)) * 1000
        self.record.status = 200
        if outcome == "drained":
            self.proxy.spawn(self._drain_then_settle(elapsed))
            return
        o.resp.close() if outcome != "ok" else o.resp.release()
        self._settle(outcome, elapsed)

    def _settle(self, outcome: AttemptOutcome, elapsed: float) -> None:
        o = self.o
        usage = o.translator.usage
        if usage is not None and not o.translator.done:
            usage = usage.with_source("provider_partial")
        chunks = getattr(o.translator, "chunks", 0)
        self.record.attempts.append(AttemptRecord(
            o.target.id, o.target.provider_name, o.target.upstream_model, outcome, 200, usage,
            elapsed * 1000, streamed_chunks=chunks,
            error=None if outcome in ("ok", "cancelled", "drained") else self.record.error_code))
        self.record.latency_ms = (time.monotonic() - self.t0) * 1000
        self.proxy._settle(self.reservation, self.record, span=self.span)
        self.proxy.deps.metrics.request_done(self.call.model, 200, time.monotonic() - self.t0,
                                             o.ttft + (o.started - self.t0))

    async def _drain_then_settle(self, elapsed: float) -> None:
        """The client left but the provider bills the whole generation: read it for its count."""
        o = self.o
        try:
            async with asyncio.timeout(300):
                async for data in o.resp.chunks():
                    o.translator.feed(data)
                    if o.translator.done:
                        break
        except (UpstreamFailure, TimeoutError):
            pass
        finally:
            o.resp.close()
        self._settle("drained", time.monotonic() - o.started)


