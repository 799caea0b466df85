"""GenAI metrics from settled records: Prometheus form on the registry, OpenTelemetry form in
an in-memory reader, the conventions' names, attributes and buckets; per-deployment series;
the tenant cap; stable reason codes; the autoscaling gauges."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounting.records import AttemptOutcome, AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.observability import genai_metrics as g
from gateway.observability.demand import Demand, TokenWindow
from gateway.observability.labels import OTHER, LabelCap, reason_code
from gateway.observability.metrics import Metrics
from gateway.observability.request_metrics import RequestMetrics
from gateway.policy.load import parse_policy
from gateway.policy.models import Policy
from gateway.routing.base import EndpointLoad, Signals
from gateway.routing.queue_time import QueueTimes
from gateway.routing.signals import engine_metrics

POLICY = """
observability: {otlp_metrics: %s, tenant_label_limit: 2}
providers:
  gpu-a: {kind: vllm, base_url: "http://vllm-a.models.svc:8000/v1"}
  gpu-b: {kind: vllm, base_url: "http://vllm-b.models.svc:8000/v1"}
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "sk-test"}
models:
  llama:
    deployments:
      - {provider: gpu-a, model: meta-llama/Llama-3-8B}
      - {provider: gpu-b, model: meta-llama/Llama-3-8B}
    fallbacks: [gpt-4o-mini]
  gpt-4o-mini:
    deployments: [{provider: openai, model: gpt-4o-mini}]
"""


def policy(otlp: bool = False) -> Policy:
    return parse_policy(POLICY % ("true" if otlp else "false"), env={})


def attempt(p: Policy, model: str, i: int = 0, outcome: AttemptOutcome = "ok",
            status: int | None = 200, usage: Usage | None = None, ms: float = 400.0,
            error: str | None = None) -> AttemptRecord:
    d = p.models[model].deployments[i]
    return AttemptRecord(d.id, d.provider, d.model, outcome, status, usage, ms, error=error)


def record(attempts: list[AttemptRecord], *, model: str = "llama", status: int = 200,
           latency_ms: float = 1000.0, ttft_ms: float | None = None, tenant: str = "acme",
           error_code: str | None = None, endpoint: str = "chat") -> RequestRecord:
    return RequestRecord("r1", datetime.now(UTC), tenant, "k1", model, endpoint,
                         ttft_ms is not None, status, latency_ms, ttft_ms, error_code, attempts)


def samples(reg: CollectorRegistry, name: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client import generate_latest

    out = []
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            if s.name == name:
                out.append((s.name, dict(s.labels), s.value))
    return out


def one(reg: CollectorRegistry, name: str, **labels: str) -> float:
    hits = [v for _, lab, v in samples(reg, name)
            if all(lab.get(k) == v2 for k, v2 in labels.items())]
    assert len(hits) == 1, (name, labels, samples(reg, name))
    return hits[0]


def test_prometheus_names_follow_the_otel_conversion() -> None:
    assert g.prometheus_name("gen_ai.server.request.duration", "s") == \
        "gen_ai_server_request_duration_seconds"
    assert g.prometheus_name("gen_ai.client.token.usage", "{token}") == "gen_ai_client_token_usage"


def test_a_streamed_request_yields_every_server_and_client_series() -> None:
    p = policy()
    reg = CollectorRegistry()
    m = RequestMetrics(reg)
    failed = attempt(p, "llama", 0, "error", 503, None, 30.0, "HTTP 503: overloaded")
    served = attempt(p, "llama", 1, usage=Usage(input_uncached=80, cache_read=20, output=41,
                                                reasoning=0), ms=900.0)
    m.observe(record([failed, served], latency_ms=1000.0, ttft_ms=200.0), p)

    server = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "vllm",
              "gen_ai_request_model": "llama", "gen_ai_response_model": "meta-llama/Llama-3-8B",
              "server_address": "vllm-b.models.svc", "error_type": ""}
    assert one(reg, "gen_ai_server_request_duration_seconds_sum", **server) == pytest.approx(1.0)
    assert one(reg, "gen_ai_server_time_to_first_token_seconds_sum", **server) == \
        pytest.approx(0.2)
    # (1.0 s - 0.2 s) over the 40 tokens after the first.
    assert one(reg, "gen_ai_server_time_per_output_token_seconds_sum", **server) == \
        pytest.approx(0.8 / 40)
    # TTFT bucket boundaries are the conventions': 0.2 s falls in le=0.25, not in le=0.1.
    assert one(reg, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.25",
               **server) == 1
    assert one(reg, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.1", **server) == 0

    client_ok = {**server}
    assert one(reg, "gen_ai_client_operation_duration_seconds_sum", **client_ok) == \
        pytest.approx(0.9)
    assert one(reg, "gen_ai_client_token_usage_sum", gen_ai_token_type="input",
               **client_ok) == 100
    assert one(reg, "gen_ai_client_token_usage_sum", gen_ai_token_type="output",
               **client_ok) == 41
    # The failed attempt: its own series, error.type a stable code, its server's address.
    assert one(reg, "gen_ai_client_operation_duration_seconds_count", error_type="http_503",
               server_address="vllm-a.models.svc") == 1
    # Per deployment: attempts by outcome, latency of the successful one, its TTFT.
    a, b = (d.id for d in p.models["llama"].deployments)
    assert one(reg, "gateway_deployment_requests_total", deployment=a, outcome="error") == 1
    assert one(reg, "gateway_deployment_requests_total", deployment=b, outcome="ok") == 1
    assert one(reg, "gateway_deployment_request_duration_seconds_sum", deployment=b) == \
        pytest.approx(0.9)
    assert not [s for s in samples(reg, "gateway_deployment_request_duration_seconds_count")
                if s[1]["deployment"] == a]
    assert one(reg, "gateway_deployment_time_to_first_token_seconds_sum", deployment=b) == \
        pytest.approx(0.2)


def test_a_failed_request_has_error_type_and_no_ttft() -> None:
    p = policy()
    reg = CollectorRegistry()
    m = RequestMetrics(reg)
    failed = attempt(p, "llama", 0, "error", None, None, 5.0, "connect_error: cannot connect")
    m.observe(record([failed], status=502, error_code="all_deployments_failed",
                     latency_ms=10.0), p)
    assert one(reg, "gen_ai_server_request_duration_seconds_count",
               error_type="all_deployments_failed", gen_ai_request_model="llama") == 1
    assert samples(reg, "gen_ai_server_time_to_first_token_seconds_count") == []
    assert one(reg, "gen_ai_client_operation_duration_seconds_count", error_type="connect") == 1


def test_unknown_models_are_one_label_value() -> None:
    p = policy()
    reg = CollectorRegistry()
    m = RequestMetrics(reg)
    for name in ("x1", "x2", "x3"):
        m.observe(record([], model=name, status=404, error_code="model_not_found"), p)
    assert one(reg, "gen_ai_server_request_duration_seconds_count",
               gen_ai_request_model="_unknown") == 3


class KeepExports:
    """An OTLP exporter stand-in: keeps the MetricsData it is handed."""

    def __init__(self) -> None:
        self.exports: list[Any] = []
        self.closed = False

    def export(self, data: Any, timeout_millis: float = 0) -> None:
        self.exports.append(data)

    def shutdown(self) -> None:
        self.closed = True


def otel_metrics(data: Any) -> dict[str, Any]:
    got: dict[str, Any] = {}
    for rm in data.resource_metrics:
        assert rm.resource.attributes["service.name"] == "model-gateway"
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                got[metric.name] = metric
    return got


def test_otlp_form_has_the_conventions_names_attributes_and_buckets() -> None:
    p = policy(otlp=True)
    keep = KeepExports()
    reg = CollectorRegistry()
    m = RequestMetrics(reg, exporters=[keep])
    served = attempt(p, "llama", 0, usage=Usage(input_uncached=10, output=5))
    m.observe(record([served], ttft_ms=50.0), p)
    m.observe(record([served], ttft_ms=70.0), p)
    assert m.otlp is not None
    got = otel_metrics(m.otlp.metrics_data())
    assert set(got) == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                        "gen_ai.server.request.duration", "gen_ai.server.time_to_first_token",
                        "gen_ai.server.time_per_output_token"}
    ttft = got["gen_ai.server.time_to_first_token"]
    assert ttft.unit == "s"
    (point,) = ttft.data.data_points
    assert list(point.explicit_bounds) == list(g.TTFT_BUCKETS)
    assert point.count == 2 and point.sum == pytest.approx(0.12)
    # 0.05 s and 0.07 s: one in (0.04, 0.06], one in (0.06, 0.08].
    assert point.bucket_counts[g.TTFT_BUCKETS.index(0.06)] == 1
    assert point.bucket_counts[g.TTFT_BUCKETS.index(0.08)] == 1
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": "llama", "gen_ai.response.model": "meta-llama/Llama-3-8B",
        "server.address": "vllm-a.models.svc"}  # no error.type on success
    usage = got["gen_ai.client.token.usage"]
    assert usage.unit == "{token}"
    by_type = {pt.attributes["gen_ai.token.type"]: pt for pt in usage.data.data_points}
    assert by_type["input"].sum == 20 and by_type["output"].sum == 10
    assert list(by_type["input"].explicit_bounds) == list(g.TOKEN_BUCKETS)
    # What the exporter is handed encodes as OTLP protobuf (what the wire carries).
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    wire = encode_metrics(m.otlp.metrics_data())
    names = {mm.name for rm in wire.resource_metrics for sm in rm.scope_metrics
             for mm in sm.metrics}
    assert names == set(got)
    m.shutdown()  # the last export, then the exporter closes
    assert keep.exports and keep.closed


def test_otlp_off_exports_nothing_and_turns_off_on_reload() -> None:
    keep = KeepExports()
    m = RequestMetrics(CollectorRegistry(), exporters=[keep])
    m.observe(record([attempt(policy(), "llama")]), policy(otlp=False))
    assert m.otlp is None
    m.observe(record([attempt(policy(), "llama")]), policy(otlp=True))
    assert m.otlp is not None
    m.observe(record([attempt(policy(), "llama")]), policy(otlp=False))
    assert m.otlp is None and keep.closed


@pytest.mark.parametrize(("reason", "code"), [
    ("HTTP 503: Service Unavailable", "http_503"),
    ("HTTP 429", "http_429"),
    ("connect_error: cannot connect: Connection refused", "connect"),
    ("timeout: no first token within 30 s", "timeout"),
    ("the stream ended before any data", "empty_stream"),
    ("midstream", "midstream"),
    ("Weird Thing: with detail 123", "weird_thing"),
    ("", "unknown"),
    (None, "unknown"),
])
def test_reason_codes_are_stable(reason: str | None, code: str) -> None:
    assert reason_code(reason) == code


def test_upstream_errors_counter_uses_the_code() -> None:
    m = Metrics()
    m.upstream_error("gpu-a", "HTTP 503")
    m.upstream_error("gpu-a", "HTTP 503")
    assert one(m.registry, "gateway_upstream_errors_total", deployment="gpu-a",
               reason="http_503") == 2


def test_tenant_cap_sends_later_tenants_to_other() -> None:
    cap = LabelCap(2)
    assert [cap(t) for t in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    assert len(cap) == 2

    m = Metrics()
    p = policy()
    for tenant in ("t1", "t2", "t3", "t4"):
        r = record([attempt(p, "llama", usage=Usage(input_uncached=1, output=1))], tenant=tenant)
        m.settled.observe(r, p)  # the policy's limit (2) applies from here on
        m.add_tokens(tenant, "llama", "output", 1)
        m.add_cost(tenant, "llama", 0.5)
    tenants = {lab["tenant"] for _, lab, _ in samples(m.registry, "gateway_tokens_total")}
    assert tenants == {"t1", "t2", OTHER}
    assert one(m.registry, "gateway_cost_usd_total", tenant=OTHER) == pytest.approx(1.0)


def test_token_window_rates() -> None:
    now = [1000.0]
    w = TokenWindow(window_s=60, slots=12, clock=lambda: now[0])
    now[0] += 10
    w.add("llama", 100, 20)
    # Ten seconds up: the rate is over those ten seconds, not over a minute.
    assert w.rates()["llama"] == pytest.approx((10.0, 2.0))
    now[0] += 52.5  # 62.5 s up; the window is 11 whole 5 s slots plus 2.5 s of this one
    w.add("llama", 475, 95)
    assert w.rates()["llama"] == pytest.approx((575 / 57.5, 115 / 57.5))
    now[0] += 61  # past the window: forgotten
    assert w.rates() == {}


def test_demand_gauges_aggregate_per_model_and_pool() -> None:
    p = policy()
    a, b = (d.id for d in p.models["llama"].deployments)
    oa = p.models["gpt-4o-mini"].deployments[0].id
    reg = CollectorRegistry()
    d = Demand(reg)
    d.update(p, Signals(loads={
        a: EndpointLoad(in_flight=3, waiting=5, running=8, kv_cache_usage=0.5),
        b: EndpointLoad(in_flight=1, waiting=2, running=4, kv_cache_usage=0.9),
        oa: EndpointLoad(in_flight=7),
    }))
    assert one(reg, "gateway_model_in_flight", model="llama") == 4
    assert one(reg, "gateway_model_in_flight", model="gpt-4o-mini") == 7
    assert one(reg, "gateway_model_requests_waiting", model="llama") == 7
    assert one(reg, "gateway_pool_requests_waiting", pool="gpu-a") == 5
    assert one(reg, "gateway_pool_requests_running", pool="gpu-b") == 4
    assert one(reg, "gateway_pool_kv_cache_usage_ratio", pool="gpu-b") == pytest.approx(0.9)
    assert one(reg, "gateway_pool_backends_reporting", pool="gpu-a") == 1
    assert not [s for s in samples(reg, "gateway_pool_in_flight") if s[1]["pool"] == "openai"]
    d.update(p, Signals(loads={a: EndpointLoad(in_flight=0)}))  # scrape stale
    assert samples(reg, "gateway_pool_kv_cache_usage_ratio") == []  # absent, not NaN
    assert one(reg, "gateway_pool_backends_reporting", pool="gpu-a") == 0


def test_failed_attempts_have_no_token_series() -> None:
    p = policy()
    reg = CollectorRegistry()
    m = RequestMetrics(reg)
    failed = attempt(p, "llama", 0, "error", 503, None, 30.0, "HTTP 503")
    m.observe(record([failed], status=502, error_code="all_deployments_failed"), p)
    assert samples(reg, "gen_ai_client_token_usage_count") == []
    assert one(reg, "gen_ai_client_operation_duration_seconds_count", error_type="http_503") == 1


def test_queue_times_from_backend_totals() -> None:
    q = QueueTimes()
    q.update("d", (10.0, 20.0))
    assert q.mean_s["d"] is None  # one scrape: no interval yet
    q.update("d", (13.0, 26.0))
    assert q.mean_s["d"] == pytest.approx(0.5)  # 3 s over the 6 requests scheduled since
    q.update("d", (13.0, 26.0))
    assert q.mean_s["d"] is None  # nothing scheduled in this interval
    q.update("d", (1.0, 2.0))
    assert q.mean_s["d"] is None  # the backend restarted: a new baseline, never negative
    q.update("d", (2.0, 4.0))
    assert q.mean_s["d"] == pytest.approx(0.5)
    q.update("d", None)
    assert "d" not in q.mean_s


def test_engine_metrics_read_queue_totals() -> None:
    text = ('vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 4.5\n'
            'vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 9\n'
            'vllm:request_queue_time_seconds_sum{engine="1",model_name="m"} 0.5\n'
            'vllm:request_queue_time_seconds_count{engine="1",model_name="m"} 1\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 2\n')
    assert engine_metrics(text, "m").queue_time == (5.0, 10.0)
    assert engine_metrics('vllm:num_requests_waiting{model_name="m"} 2\n').queue_time is None


def test_a_stream_that_broke_after_its_200_is_an_error_with_no_ttft() -> None:
    p = policy()
    reg = CollectorRegistry()
    m = RequestMetrics(reg)
    broke = attempt(p, "llama", 0, "failed_midstream", 200, Usage(output=3), 500.0,
                    "upstream_error")
    m.observe(record([broke], ttft_ms=100.0, error_code="upstream_error"), p)
    assert one(reg, "gen_ai_server_request_duration_seconds_count",
               error_type="upstream_error") == 1
    assert samples(reg, "gen_ai_server_time_to_first_token_seconds_count") == []
    assert one(reg, "gen_ai_client_operation_duration_seconds_count",
               error_type="upstream_error") == 1
