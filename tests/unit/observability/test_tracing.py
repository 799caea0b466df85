"""Tracing: GenAI-convention spans, parents from traceparent, attempts, usage, the no-op path."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.datastructures import Headers

from gateway.accounting.records import AttemptOutcome, AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.call import Call
from gateway.observability.trace_export import exporters_from_env
from gateway.observability.tracing import (
    NOOP_ATTEMPT,
    NOOP_REQUEST,
    Tracing,
)
from gateway.policy.load import parse_policy
from gateway.policy.models import Policy
from gateway.providers.base import Target

POLICY = """
observability: {tracing: %s}
providers:
  gpu-a: {kind: vllm, base_url: "http://vllm-a.models.svc:8000/v1"}
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "sk-test"}
  azure: {kind: azure, base_url: "https://res.openai.azure.com", api_key: "k"}
models:
  llama:
    deployments: [{provider: gpu-a, model: meta-llama/Llama-3-8B}]
    fallbacks: [gpt-4o-mini]
  gpt-4o-mini:
    deployments:
      - {provider: openai, model: gpt-4o-mini}
      - {provider: azure, model: gpt-4o-mini-dep}
  embed:
    type: embedding
    deployments: [{provider: openai, model: text-embedding-3-small}]
"""

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def policy(tracing: bool = True) -> Policy:
    return parse_policy(POLICY % ("true" if tracing else "false"), env={})


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def tracing_for(exported: tuple[TracerProvider, InMemorySpanExporter],
                on: bool = True) -> Tracing:
    return Tracing.from_policy(policy(on), tracer_provider=exported[0])


def call(model: str = "llama", endpoint: Any = "chat", headers: dict[str, str] | None = None,
         **body: Any) -> Call:
    return Call(endpoint=endpoint, model=model, body={"model": model, **body}, raw=b"",
                stream=False, request_id="req-1", headers=headers or {})


def target(p: Policy, model: str, i: int = 0) -> Target:
    d = p.models[model].deployments[i]
    return Target(model, d, d.provider)


def attempt(t: Target, outcome: AttemptOutcome = "ok", status: int | None = 200,
            usage: Usage | None = None, error: str | None = None,
            duration_ms: float = 12.5) -> AttemptRecord:
    return AttemptRecord(t.id, t.provider_name, t.upstream_model, outcome, status, usage,
                         duration_ms, error=error)


def record(*attempts: AttemptRecord, status: int = 200, error_code: str | None = None,
           latency_ms: float = 0.0) -> RequestRecord:
    return RequestRecord(request_id="req-1", ts=datetime.now(UTC), tenant="acme",
                         key_id="acme-ci", model="llama", endpoint="chat", stream=False,
                         status=status, latency_ms=latency_ms, error_code=error_code,
                         attempts=list(attempts))


def spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_disabled_tracing_hands_out_the_shared_no_op_span_and_exports_nothing(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported, on=False)
    p = policy(False)
    span = tracing.request(call())
    assert span is NOOP_REQUEST and not span.recording
    att = span.attempt(target(p, "llama"))
    assert att is NOOP_ATTEMPT
    headers: dict[str, str] = {"Content-Type": "application/json"}
    assert att.traced_headers(headers) is headers
    att.end(200)
    span.finish(record(attempt(target(p, "llama"))))
    span.finish(None, status=401, error="invalid_api_key")
    assert headers == {"Content-Type": "application/json"}
    assert exported[1].get_finished_spans() == ()


def test_request_span_follows_the_genai_conventions_with_usage_and_gateway_attributes(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    t = target(p, "llama")
    span = tracing.request(call(max_tokens=64, temperature=0.2))
    assert span.recording
    span.attempt(t, p.providers["gpu-a"])
    rec = record(attempt(t, usage=Usage(input_uncached=90, cache_read=10, output=30,
                                        reasoning=5)))
    rec.attempts[0].cost_usd = Decimal("0.0025")
    rec.ttft_ms = 40.0
    span.finish(rec)

    got = spans(exported[1])
    assert set(got) == {"chat llama", "chat meta-llama/Llama-3-8B"}
    req, att = got["chat llama"], got["chat meta-llama/Llama-3-8B"]
    assert req.kind is SpanKind.SERVER and att.kind is SpanKind.CLIENT
    assert req.parent is None
    assert att.parent is not None and att.parent.span_id == req.context.span_id
    assert req.status.status_code is StatusCode.UNSET
    a = attrs(req)
    assert {k: a[k] for k in (
        "gen_ai.operation.name", "gen_ai.request.model", "gen_ai.response.model",
        "gen_ai.provider.name", "gen_ai.system", "server.address", "server.port",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.request.max_tokens", "gen_ai.request.temperature",
        "gateway.tenant", "gateway.deployment", "gateway.attempts", "gateway.cost_usd",
        "gen_ai.response.time_to_first_chunk", "http.response.status_code",
    )} == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "llama",
        "gen_ai.response.model": "meta-llama/Llama-3-8B",
        "gen_ai.provider.name": "vllm", "gen_ai.system": "vllm",
        "server.address": "vllm-a.models.svc", "server.port": 8000,
        # Inclusive counts, as the conventions define them: cached in input, reasoning in output.
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 35,
        "gen_ai.usage.cache_read.input_tokens": 10, "gen_ai.usage.reasoning.output_tokens": 5,
        "gen_ai.request.max_tokens": 64, "gen_ai.request.temperature": 0.2,
        "gateway.tenant": "acme", "gateway.deployment": "gpu-a/meta-llama/Llama-3-8B",
        "gateway.attempts": 1, "gateway.cost_usd": 0.0025,
        "gen_ai.response.time_to_first_chunk": 0.04, "http.response.status_code": 200,
    }
    b = attrs(att)
    assert b["gen_ai.request.model"] == "meta-llama/Llama-3-8B"
    assert b["gateway.attempt.outcome"] == "ok" and b["gateway.attempt"] == 1
    assert b["gen_ai.usage.input_tokens"] == 100 and b["gateway.usage.source"] == "provider"
    # The attempt ends where the ledger says it did, not when finish() ran.
    assert att.end_time - att.start_time == 12_500_000  # type: ignore[operator]


def test_fallback_gives_one_child_per_attempt_and_marks_only_the_failed_one(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    first, second = target(p, "llama"), target(p, "gpt-4o-mini")
    span = tracing.request(call())
    span.attempt(first, p.providers["gpu-a"])
    span.attempt(second, p.providers["openai"])
    span.finish(record(
        attempt(first, "error", 503, error="HTTP 503: overloaded"),
        attempt(second, usage=Usage(input_uncached=7, output=3)),
    ))
    got = spans(exported[1])
    failed, ok = got["chat meta-llama/Llama-3-8B"], got["chat gpt-4o-mini"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "HTTP 503: overloaded"
    assert attrs(failed)["error.type"] == "503"
    assert "gen_ai.response.model" not in attrs(failed)
    assert ok.status.status_code is StatusCode.UNSET
    assert attrs(ok)["gen_ai.provider.name"] == "openai"
    assert attrs(ok)["server.address"] == "api.openai.com"
    req = attrs(got["chat llama"])
    assert req["gateway.attempts"] == 2
    assert req["gateway.deployment"] == "openai/gpt-4o-mini"
    assert req["gen_ai.response.model"] == "gpt-4o-mini"
    assert req["gen_ai.usage.input_tokens"] == 7
    assert [attrs(s)["gateway.attempt"] for s in (failed, ok)] == [1, 2]


def test_connect_failures_get_their_reason_as_error_type(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    t = target(p, "gpt-4o-mini", 1)
    span = tracing.request(call("gpt-4o-mini"))
    span.attempt(t)  # no provider config handed in: the policy's is used
    span.finish(record(attempt(t, "error", None, error="connect_error: refused")),
                status=502)
    att = spans(exported[1])["chat gpt-4o-mini-dep"]
    assert attrs(att)["error.type"] == "connect_error"
    assert attrs(att)["gen_ai.provider.name"] == "azure.ai.openai"


def test_incoming_traceparent_becomes_the_parent_and_upstream_headers_continue_it(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    t = target(p, "llama")
    incoming = Headers({"TraceParent": f"00-{TRACE_ID}-{PARENT_ID}-01"})  # any case
    span = tracing.request(call(), headers=incoming)
    att = span.attempt(t)
    shared = {"Content-Type": "application/json"}  # an adapter's dict, reused per request
    upstream = att.traced_headers(shared)
    assert shared == {"Content-Type": "application/json"}
    assert upstream["Content-Type"] == "application/json"
    att.end(200)
    span.finish(record(attempt(t)))
    got = spans(exported[1])
    req, child = got["chat llama"], got["chat meta-llama/Llama-3-8B"]
    assert format(req.context.trace_id, "032x") == TRACE_ID
    assert req.parent is not None and format(req.parent.span_id, "016x") == PARENT_ID
    assert req.parent.is_remote
    version, trace_id, span_id, flags = upstream["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id == format(child.context.span_id, "016x")


def test_traceparent_is_read_from_the_call_headers_by_default(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    span = tracing.request(call(headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}))
    span.finish(None, status=401, error="invalid_api_key")
    (req,) = exported[1].get_finished_spans()
    assert format(req.context.trace_id, "032x") == TRACE_ID


def test_a_malformed_traceparent_starts_a_new_trace(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    span = tracing.request(call(headers={"traceparent": "00-nothex-nothex-01"}))
    span.finish(None, status=401)
    (req,) = exported[1].get_finished_spans()
    assert req.parent is None


def test_an_unsampled_parent_yields_a_non_recording_span_that_exports_nothing(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    t = target(p, "llama")
    span = tracing.request(call(headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}))
    assert not span.recording
    span.attempt(t)
    span.finish(record(attempt(t)))
    assert exported[1].get_finished_spans() == ()


@pytest.mark.parametrize(("status", "error", "failed"), [
    (401, "invalid_api_key", False),  # the caller's error: a server span stays unset
    (429, "rate_limit_exceeded", False),
    (502, "all_deployments_failed", True),
    (200, "upstream_stream_error", True),  # the stream broke after its 200 went out
])
def test_request_span_status_fails_on_5xx_and_broken_streams_only(
        exported: tuple[TracerProvider, InMemorySpanExporter], status: int, error: str,
        failed: bool) -> None:
    tracing = tracing_for(exported)
    span = tracing.request(call())
    if status == 401:
        span.finish(None, status=status, error=error)
    else:
        span.finish(record(status=status, error_code=error))
    (req,) = exported[1].get_finished_spans()
    a = attrs(req)
    assert a["http.response.status_code"] == status
    assert a["gateway.error_code"] == error
    assert (req.status.status_code is StatusCode.ERROR) is failed
    assert ("error.type" in a) is failed


def test_a_late_finish_does_not_stretch_the_span_past_the_recorded_latency(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    span = tracing.request(call())
    span.finish(record(latency_ms=0.001))
    (req,) = exported[1].get_finished_spans()
    assert req.end_time - req.start_time <= 1_000  # type: ignore[operator]


def test_usage_sums_every_billed_attempt_and_the_same_deployment_twice_pairs_in_order(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    t = target(p, "gpt-4o-mini")
    span = tracing.request(call("gpt-4o-mini"))
    span.attempt(t)
    span.attempt(t)
    span.attempt(target(p, "gpt-4o-mini", 1))  # never recorded: ends with the request
    span.finish(record(
        attempt(t, "failed_midstream", 200, Usage(input_uncached=10, output=4,
                                                  source="provider_partial"),
                error="upstream_stream_error", duration_ms=5),
        attempt(t, usage=Usage(input_uncached=10, output=6, source="estimated"),
                duration_ms=7),
    ))
    finished = sorted(exported[1].get_finished_spans(),
                      key=lambda s: attrs(s).get("gateway.attempt", 0))
    req, first, second, third = finished
    assert attrs(req)["gen_ai.usage.input_tokens"] == 20
    assert attrs(req)["gen_ai.usage.output_tokens"] == 10
    assert attrs(req)["gateway.usage.source"] == "estimated"
    assert attrs(first)["gateway.attempt.outcome"] == "failed_midstream"
    assert first.status.status_code is StatusCode.ERROR
    assert attrs(second)["gateway.attempt.outcome"] == "ok"
    assert first.end_time - first.start_time == 5_000_000  # type: ignore[operator]
    assert second.end_time - second.start_time == 7_000_000  # type: ignore[operator]
    assert "gateway.attempt.outcome" not in attrs(third)


def test_embeddings_use_their_operation_name(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    span = tracing.request(call("embed", endpoint="embeddings", input="hi"))
    span.finish(record())
    (req,) = exported[1].get_finished_spans()
    assert req.name == "embeddings embed"
    assert attrs(req)["gen_ai.operation.name"] == "embeddings"


def test_finish_is_idempotent_and_attempts_after_it_are_no_ops(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported)
    p = policy()
    span = tracing.request(call())
    span.finish(record())
    span.finish(record(status=500))
    assert span.attempt(target(p, "llama")) is NOOP_ATTEMPT
    (req,) = exported[1].get_finished_spans()
    assert attrs(req)["http.response.status_code"] == 200


def test_reload_switches_tracing_on_and_off(
        exported: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracing = tracing_for(exported, on=False)
    assert not tracing.enabled
    tracing.update(policy(True))
    assert tracing.enabled
    tracing.request(call()).finish(record())
    tracing.update(policy(False))
    assert tracing.request(call()) is NOOP_REQUEST
    assert len(exported[1].get_finished_spans()) == 1


@pytest.mark.parametrize(("env", "kinds"), [
    ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_TRACES_EXPORTER": "zipkin-not-here"}, []),
])
def test_exporters_come_from_the_standard_variables(env: dict[str, str],
                                                     kinds: list[type]) -> None:
    assert [type(e) for e in exporters_from_env(env)] == kinds


def test_otlp_is_used_only_when_its_package_is_installed() -> None:
    installed = importlib.util.find_spec("opentelemetry.exporter") is not None and \
        importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    got = exporters_from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert len(got) == (1 if installed else 0)
    assert len(exporters_from_env({})) == len(got)  # otlp is the default


def test_console_exporter_from_the_environment_enables_tracing_with_a_service_name() -> None:
    tracing = Tracing.from_policy(policy(True), env={"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert tracing.enabled
        provider = tracing._provider
        assert provider is not None
        assert provider.resource.attributes["service.name"] in (
            "model-gateway", os.environ.get("OTEL_SERVICE_NAME"))
    finally:
        tracing.shutdown()
    assert not tracing.enabled


def test_tracing_on_without_any_exporter_stays_off() -> None:
    tracing = Tracing.from_policy(policy(True), env={"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.enabled
    assert tracing.request(call()) is NOOP_REQUEST
