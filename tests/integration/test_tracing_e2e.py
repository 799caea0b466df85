"""Traces from the real app: a server span per request (child of the caller's traceparent),
a client span per upstream attempt, usage from the settled record, traceparent upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.observability.tracing import Tracing
from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
MSG = [{"role": "user", "content": "hi"}]


def in_memory(gw: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    """Swap the app's tracing for one exporting to memory (Deps is built once per app)."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    gw.app.state.deps.tracing = Tracing.from_policy(gw.policy, tracer_provider=tp)
    return tp, exporter


@pytest.fixture
def traced(fakes: Any, gateway: Any, tmp_path: Any) -> Iterator[tuple[Any, Any, Any, Any]]:
    a, b = fakes("a", vllm=True), fakes("b")
    gw = gateway(simple_policy(tmp_path, {"a": provider(a, kind="vllm"), "b": provider(b)}, {
        "chat": {"deployments": [{"provider": "a", "model": "m"}], "fallbacks": ["backup"]},
        "backup": {"deployments": [{"provider": "b", "model": "backup-m"}]},
    }, observability={"tracing": True}))
    tp, exporter = in_memory(gw)
    yield a, b, gw, exporter
    tp.shutdown()


def finished(exporter: InMemorySpanExporter, n: int) -> list[ReadableSpan]:
    assert wait_until(lambda: len(exporter.get_finished_spans()) >= n, timeout=10)
    return list(exporter.get_finished_spans())


def by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind is kind), key=lambda s: s.start_time or 0)


def test_request_span_continues_the_callers_trace_with_usage(traced: Any) -> None:
    a, _b, gw, exporter = traced
    r = httpx.post(gw.base_url + "/chat/completions", headers={"traceparent": PARENT},
                   json={"model": "chat", "messages": MSG}, timeout=30)
    assert r.status_code == 200
    spans = finished(exporter, 2)
    (server,) = by_kind(spans, SpanKind.SERVER)
    (client,) = by_kind(spans, SpanKind.CLIENT)
    assert server.name == "chat chat" and client.name == "chat m"
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    attrs = dict(server.attributes or {})
    usage = r.json()["usage"]
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["gen_ai.provider.name"] == "vllm"
    assert attrs["gateway.deployment"] == "a/m" and attrs["gateway.tenant"] == "default"
    # The upstream received the attempt's span as its parent.
    sent = {k.lower(): v for k, v in a.requests[-1].headers.items()}
    _version, trace_id, span_id, _flags = sent["traceparent"].split("-")
    assert trace_id == TRACE_ID and span_id == format(client.context.span_id, "016x")


def test_fallback_and_stream_give_one_client_span_per_attempt(traced: Any) -> None:
    a, _b, gw, exporter = traced
    a.fail_next(1, status=503)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="chat", messages=MSG, stream=True) if c.choices)
    assert text
    spans = finished(exporter, 3)
    (server,) = by_kind(spans, SpanKind.SERVER)
    failed, ok = by_kind(spans, SpanKind.CLIENT)
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "503"
    assert dict(ok.attributes or {})["gateway.attempt.outcome"] == "ok"
    attrs = dict(server.attributes or {})
    assert attrs["gateway.attempts"] == 2
    assert attrs["gen_ai.response.model"] == "backup-m"
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert "gen_ai.response.time_to_first_chunk" in attrs


def test_unauthenticated_request_span_ends_with_its_status(fakes: Any, gateway: Any,
                                                           tmp_path: Any) -> None:
    a = fakes("a")
    gw = gateway(simple_policy(tmp_path, {"a": provider(a)}, {
        "chat": {"deployments": [{"provider": "a", "model": "m"}]}},
        observability={"tracing": True},
        tenants={"t": {"keys": [{"id": "k", "hash": "sha256:" + "0" * 64}]}}))
    tp, exporter = in_memory(gw)
    try:
        r = httpx.post(gw.base_url + "/chat/completions",
                       json={"model": "chat", "messages": MSG}, timeout=30)
        assert r.status_code == 401
        (span,) = finished(exporter, 1)
        assert dict(span.attributes or {})["http.response.status_code"] == 401
        assert span.status.status_code is StatusCode.UNSET
    finally:
        tp.shutdown()
