"""StreamResponse: the ASGI response that pumps an open upstream stream to the client.

It watches for the client going away itself (rather than relying on a send failing later) so
the upstream is cancelled — or drained, by policy — at once. However the stream ends, its
record is closed exactly once (`closing.py`), and before the client's last byte when there is
one: done, an upstream failure, a client gone, an unexpected error, or a shutdown (an SSE
error event in the ingress's shape, and `gateway_shutdown` in the record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.accounting.records import AttemptOutcome, AttemptRecord, RequestRecord
from gateway.call import Call
from gateway.closing import Closer
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamError, sse_error_event
from gateway.limits.base import Reservation
from gateway.observability.tracing import RequestSpan
from gateway.providers.base import StreamTranslator, Target
from gateway.stages.base import Blocked, StreamWatch
from gateway.stages.pipeline import content_filter_chunk
from gateway.upstream import UpstreamFailure, UpstreamResponse

log = logging.getLogger("gateway.proxy")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class Opened:
    """A stream whose first bytes have arrived: from here on the status is fixed."""

    target: Target
    resp: UpstreamResponse
    translator: StreamTranslator
    first: bytes
    started: float
    ttft: float
    drain: bool


class StreamResponse:
    def __init__(self, closer: Closer, call: Call, record: RequestRecord,
                 reservation: Reservation | None, opened: Opened, codec: Any,
                 headers: dict[str, str], t0: float, translate: bool = True,
                 span: RequestSpan | None = None, watch: StreamWatch | None = None) -> None:
        self.closer = closer
        self.deps = closer.deps
        self.span = span
        self.call = call
        self.record = record
        self.reservation = reservation
        self.o = opened
        self.codec = codec if translate else None
        self.error_codec = codec
        self.headers = headers
        self.t0 = t0
        self.gone = False
        self.complete = False
        self._attempt: AttemptRecord | None = None
        self._producer: Any = opened.translator
        # The request stages' watcher (gateway/stages): None when no stage watches this stream.
        self.watch = watch
        # The upstream stream is OpenAI-shaped (not a native pass-through).
        self.openai_shaped = translate

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
        self.closer.running.add(task)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._pump(send)
        except asyncio.CancelledError:
            if self.gone:
                task.uncancel()
            elif self.closer.draining:
                task.uncancel()
                await self._fail(send, ServiceUnavailable(
                    "The gateway is shutting down and ended this stream; retry the request.",
                    code="gateway_shutdown"), "cancelled")
            else:
                raise
        except OSError:
            self.gone = True
        except Blocked as e:  # a stage stopped the stream (gateway/stages/base.py)
            await self._blocked(send, e)
        except Exception as e:
            # A bug in a translator or codec: the client still gets a clear end, and the
            # record says what happened (status 200 was already sent).
            log.exception("unexpected error while streaming request %s", self.record.request_id)
            self.record.error_class = type(e).__qualname__
            await self._fail(send, GatewayError(
                "The gateway hit an internal error during this stream; it has been logged. "
                "Retry the request.", code="internal_error"), "failed_midstream")
        finally:
            watcher.cancel()
            self.closer.running.discard(task)
            self._closed_anyway()

    async def _client_bytes(self, data: bytes, codec_tr: Any) -> bytes:
        """What the client gets of upstream bytes: through the stages' watcher, then the
        ingress's codec (a native shape), either of them absent."""
        if self.watch is not None and data:
            data = await self.watch.feed(data)
        if codec_tr is not None and data:
            data = codec_tr.feed(data)
        return data

    async def _pump(self, send: Send) -> None:
        o = self.o
        tr = o.translator
        codec_tr = self.codec.stream(self.call) if self.codec is not None else None
        # What the client's bytes come from: it knows how to end them (sequence numbers).
        self._producer = codec_tr if codec_tr is not None else o.translator

        # Whether chunks go through `_client_bytes` at all: not on a plain OpenAI stream,
        # where that would be a coroutine per chunk doing nothing.
        reshaped = self.watch is not None or codec_tr is not None
        error: GatewayError | None = None
        last = b""
        held = b""
        # A model in a rollout: its length gate counts replies cut by `finish_reason: length`.
        measure = self.record.rollout_arm is not None
        if measure and o.first.find(b'"length"') >= 0:  # find: see sse.has_any
            self.record.finish_length = True
        try:
            first = await self._client_bytes(o.first, codec_tr)
            if tr.done:
                held = first  # the whole stream came in one read: it goes after the record
            elif first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            if not tr.done:
                async for data in o.resp.chunks():
                    chunk = tr.feed(data)
                    if measure and chunk.find(b'"length"') >= 0:
                        self.record.finish_length = True
                    if tr.error is not None:
                        error = UpstreamError(f"upstream {o.target.id} failed mid-stream: "
                                              f"{tr.error.message}", code="upstream_stream_error")
                        break
                    if tr.done:
                        last = chunk  # held: the record is journaled before the end
                        break
                    if reshaped:
                        chunk = await self._client_bytes(chunk, codec_tr)
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                else:
                    if not tr.done:
                        error = UpstreamError(f"upstream {o.target.id} ended the stream before "
                                              "it was complete", code="upstream_stream_truncated")
        except UpstreamFailure as e:
            error = UpstreamError(f"upstream {o.target.id} failed mid-stream: {e}",
                                  code="upstream_stream_error")
        if error is not None:
            self.deps.metrics.upstream_error(o.target.id, "midstream")
            await self._fail(send, error, "failed_midstream")
            return
        tail = held + await self._client_bytes(last, codec_tr) + await self._client_bytes(
            tr.finish(), codec_tr)
        if self.watch is not None:
            await self.watch.finish()
        if codec_tr is not None:
            tail += codec_tr.finish()
        if self.error_codec is not None:
            # Before the end reaches the client (Responses: the response is stored, so a
            # follow-up turn sent the moment this one ends finds it).
            self.error_codec.completed(self.call, o.target, self.record.tenant)
        self._end("ok")
        await self.closer.close(self.reservation, self.record, self.span)
        self.complete = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        await _read_to_eof(o.resp)
        o.resp.release()

    async def _fail(self, send: Send, error: GatewayError, outcome: AttemptOutcome) -> None:
        """End the stream with one error event in the ingress's shape, after the record."""
        self._end(outcome, error=error.code)
        self.o.resp.close()
        await self.closer.close(self.reservation, self.record, self.span)
        ending = getattr(self._producer, "error_event", None)
        if ending is not None:
            body = ending(error)
        elif self.error_codec is not None:
            body = self.error_codec.error_event(error)
        else:
            body = sse_error_event(error)
        self.complete = True
        try:
            async with asyncio.timeout(2.0):
                await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # the connection is gone or broken: nothing more can reach it
            self.gone = True

    async def _blocked(self, send: Send, e: Blocked) -> None:
        """End a stream a stage blocked: a `finish_reason: content_filter` chunk (OpenAI-shaped
        streams, through the ingress codec), then the error event; what streamed is billed."""
        end = e.release
        if self.openai_shaped:
            end += content_filter_chunk(self.call)
            if self._producer is not self.o.translator:  # the ingress codec's stream
                end = self._producer.feed(end)
        if end and not self.gone:
            try:
                await send({"type": "http.response.body", "body": end, "more_body": True})
            except Exception:  # the connection is gone: the record still closes below
                self.gone = True
        await self._fail(send, e, "blocked")

    def _end(self, outcome: AttemptOutcome, error: str | None = None) -> AttemptRecord:
        """Record the serving attempt, once: its outcome, usage and timings."""
        if self._attempt is not None:
            return self._attempt
        o = self.o
        elapsed = time.monotonic() - o.started
        usage = o.translator.usage
        if usage is not None and not o.translator.done:
            usage = usage.with_source("provider_partial")
        self._attempt = AttemptRecord(
            o.target.id, o.target.provider_name, o.target.upstream_model, outcome, 200, usage,
            elapsed * 1000, streamed_chunks=getattr(o.translator, "chunks", 0), error=error)
        self.record.attempts.append(self._attempt)
        # Until now the record read as the journal's marker (`gateway_interrupted`).
        self.record.error_code = error
        self.deps.signals.end(o.target.id, outcome == "ok", elapsed, o.ttft)
        ttft = o.ttft + (o.started - self.t0)
        self.record.ttft_ms = ttft * 1000
        self.record.status = 200
        self.record.latency_ms = (time.monotonic() - self.t0) * 1000
        self.deps.metrics.request_done(self.call.model, 200, time.monotonic() - self.t0, ttft)
        return self._attempt

    def _closed_anyway(self) -> None:
        """Runs once, however the stream ended; never awaits (it may run while cancelled).
        What ended normally is closed already; this closes what the client left."""
        if self.record.closed:
            return
        self.record.client_disconnected = True
        if self.o.drain:
            attempt = self._end("drained")
            # Journal what is known now: should the process die while draining, the ledger
            # still gets the partial count (the final record supersedes this line).
            self.deps.settler.admitted(self.record)
            self.closer.spawn(self._drain_then_close(attempt))
            return
        self._end("cancelled")
        self.o.resp.close()
        self.closer.close_now(self.reservation, self.record, self.span)

    async def _drain_then_close(self, attempt: AttemptRecord) -> None:
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
            usage = o.translator.usage
            if usage is not None and not o.translator.done:
                usage = usage.with_source("provider_partial")
            attempt.usage = usage
            attempt.streamed_chunks = getattr(o.translator, "chunks", 0)
            attempt.duration_ms = (time.monotonic() - o.started) * 1000
            self.closer.close_now(self.reservation, self.record, self.span)


async def _read_to_eof(resp: UpstreamResponse) -> None:
    """After the terminal event, read the (normally empty) rest so the connection can go back
    to the pool; an upstream that keeps talking after [DONE] is cut off after a second."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in resp.chunks():
                pass
    except (UpstreamFailure, TimeoutError):
        resp.close()
