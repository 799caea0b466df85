"""The GenAI metrics after real traffic: the gateway in front of two fake vLLM backends,
`/metrics` read back in Prometheus form; and a `gateway serve` process exporting the same
metrics over OTLP/HTTP to a receiver in this process, decoded with opentelemetry-proto; the
Grafana dashboard's queries checked against what `/metrics` exports; the tenant label cap."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys import generate_key, hash_key
from tests.fakes.base import FakeServer, wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway, GatewayProcess
from tests.integration.conftest import provider, simple_policy
from tests.promql import dashboard_exprs, exported_names, metric_names

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def policy(tmp: Path, a: FakeOpenAI, b: FakeOpenAI, **obs: Any) -> dict[str, Any]:
    return simple_policy(
        tmp, {"a": provider(a, kind="vllm"), "b": provider(b, kind="vllm")},
        {"chat": {"deployments": [{"provider": "a", "model": "m-a"}], "fallbacks": ["spare"]},
         "spare": {"deployments": [{"provider": "b", "model": "m-b"}]}},
        router={"health_check_interval_s": 0.2, "metrics_stale_s": 5},
        observability={"metrics": True, **obs})


def traffic(base_url: str, a: FakeOpenAI) -> None:
    """One reply, one stream (both from a), one reply a refuses with 503 and b serves."""
    r = httpx.post(base_url + "/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "a/m-a", r.text
    with httpx.stream("POST", base_url + "/chat/completions", timeout=10,
                      json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
                      ) as s:
        assert s.status_code == 200
        assert "[DONE]" in "".join(s.iter_text())
    a.fail_next(1, 503)
    r = httpx.post(base_url + "/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b/m-b", r.text


def series(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    hits = [v for (n, lab), v in got.items()
            if n == name and all((k, want) in lab for k, want in labels.items())]
    assert len(hits) == 1, (name, labels, [k for k in got if k[0] == name])
    return hits[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A gateway after `traffic`, with backend a reporting a queue: its /metrics text."""
    tmp = tmp_path_factory.mktemp("genai")
    a = FakeOpenAI("a", vllm=True, words=4).start()
    b = FakeOpenAI("b", vllm=True, words=2).start()
    a.waiting, a.running, a.kv_usage = 7, 3, 0.625
    a.queue_time_step = 0.25  # every scrape: one more request that waited 0.25 s
    gw = Gateway(policy(tmp, a, b), tmp=tmp).start()
    try:
        traffic(gw.base_url, a)

        def settled() -> bool:
            got = series(httpx.get(gw.url + "/metrics").text)
            return (sum(v for (n, _), v in got.items()
                        if n == "gen_ai_server_request_duration_seconds_count") == 3
                    and value(got, "gateway_pool_requests_waiting", pool="a") == 7
                    and ("gateway_deployment_queue_time_seconds",
                         frozenset({("deployment", "a/m-a")})) in got)

        assert wait_until(settled, timeout=10)
        text = httpx.get(gw.url + "/metrics").text
        yield {"text": text, "series": series(text), "a": a, "b": b}
    finally:
        gw.stop()
        a.stop()
        b.stop()


def test_server_series_carry_the_conventions_attributes(served: dict[str, Any]) -> None:
    got = served["series"]
    on_a = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "vllm",
            "gen_ai_request_model": "chat", "gen_ai_response_model": "m-a",
            "server_address": "127.0.0.1", "error_type": ""}
    assert value(got, "gen_ai_server_request_duration_seconds_count", **on_a) == 2
    assert value(got, "gen_ai_server_request_duration_seconds_count",
                 gen_ai_response_model="m-b") == 1
    # Only the stream has a time to first token, and (4 words) a time per output token.
    assert value(got, "gen_ai_server_time_to_first_token_seconds_count", **on_a) == 1
    assert value(got, "gen_ai_server_time_per_output_token_seconds_count", **on_a) == 1
    assert value(got, "gen_ai_server_time_to_first_token_seconds_bucket", le="10.0",
                 **on_a) == 1


def test_client_series_count_tokens_and_failed_attempts(served: dict[str, Any]) -> None:
    got = served["series"]
    a = served["a"]
    ok_a = {"gen_ai_response_model": "m-a", "error_type": ""}
    # Two calls served by a: the fake's prompt count twice, its four words twice.
    assert value(got, "gen_ai_client_token_usage_sum", gen_ai_token_type="input",
                 **ok_a) == 2 * a.prompt_tokens
    assert value(got, "gen_ai_client_token_usage_sum", gen_ai_token_type="output",
                 **ok_a) == 8
    assert value(got, "gen_ai_client_token_usage_count", gen_ai_token_type="output",
                 **ok_a) == 2
    assert value(got, "gen_ai_client_operation_duration_seconds_count", **ok_a) == 2
    assert value(got, "gen_ai_client_operation_duration_seconds_count",
                 gen_ai_response_model="m-a", error_type="http_503") == 1
    assert value(got, "gateway_upstream_errors_total", deployment="a/m-a",
                 reason="http_503") == 1


def test_per_deployment_series_and_demand_gauges(served: dict[str, Any]) -> None:
    got = served["series"]
    assert value(got, "gateway_deployment_requests_total", deployment="a/m-a",
                 outcome="ok") == 2
    assert value(got, "gateway_deployment_requests_total", deployment="a/m-a",
                 outcome="error") == 1
    assert value(got, "gateway_deployment_requests_total", deployment="b/m-b",
                 outcome="ok", model="chat") == 1
    assert value(got, "gateway_deployment_request_duration_seconds_count",
                 deployment="a/m-a") == 2
    assert value(got, "gateway_deployment_time_to_first_token_seconds_count",
                 deployment="a/m-a") == 1
    assert value(got, "gateway_pool_requests_waiting", pool="a") == 7
    assert value(got, "gateway_pool_requests_running", pool="a") == 3
    assert value(got, "gateway_pool_kv_cache_usage_ratio", pool="a") == 0.625
    assert value(got, "gateway_pool_backends_reporting", pool="a") == 1
    assert value(got, "gateway_model_requests_waiting", model="chat") == 7
    assert value(got, "gateway_model_in_flight", model="chat") == 0
    # Queue time as the backend reports it (vllm:request_queue_time_seconds); b reports none.
    assert value(got, "gateway_deployment_queue_time_seconds", deployment="a/m-a") == 0.25
    assert value(got, "gateway_pool_queue_time_seconds", pool="a") == 0.25
    assert ("gateway_pool_queue_time_seconds", frozenset({("pool", "b")})) not in got
    assert value(got, "gateway_model_tokens_per_second", model="chat", type="output") > 0


# ---- OTLP ------------------------------------------------------------------------------------

class OtlpReceiver(FakeServer):
    """An OTLP/HTTP metrics endpoint: keeps every decoded export request."""

    def __init__(self) -> None:
        super().__init__("otlp")
        self.exports: list[ExportMetricsServiceRequest] = []
        self._guard = threading.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/metrics", self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        msg = ExportMetricsServiceRequest()
        msg.ParseFromString(await request.read())
        with self._guard:
            self.exports.append(msg)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def latest(self) -> dict[str, Any]:
        """Metric name → (resource attributes, metric) from the newest export (cumulative)."""
        with self._guard:
            exports = list(self.exports)
        out: dict[str, Any] = {}
        for msg in exports:
            for rm in msg.resource_metrics:
                res = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out[m.name] = (res, m)
        return out


def attrs(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def test_otlp_export_to_a_collector(tmp_path: Path) -> None:
    a = FakeOpenAI("a", vllm=True, words=4).start()
    b = FakeOpenAI("b", vllm=True, words=2).start()
    rx = OtlpReceiver().start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url, "OTEL_METRIC_EXPORT_INTERVAL": "200",
           "OTEL_METRICS_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "gw-under-test"}
    gw = GatewayProcess(policy(tmp_path, a, b, otlp_metrics=True), env=env, tmp=tmp_path)
    try:
        gw.start()
        traffic(gw.base_url, a)
        names = {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                 "gen_ai.server.request.duration", "gen_ai.server.time_to_first_token",
                 "gen_ai.server.time_per_output_token"}

        def exported() -> bool:
            got = rx.latest()
            if not names <= set(got):
                return False
            points = got["gen_ai.server.request.duration"][1].histogram.data_points
            return sum(p.count for p in points) == 3

        assert wait_until(exported, timeout=15), rx.latest().keys()
        got = rx.latest()
        res, duration = got["gen_ai.server.request.duration"]
        assert res["service.name"] == "gw-under-test"
        assert duration.unit == "s"
        by_model = {attrs(p)["gen_ai.response.model"]: p for p in duration.histogram.data_points}
        assert by_model["m-a"].count == 2 and by_model["m-b"].count == 1
        assert attrs(by_model["m-a"]) == {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "vllm",
            "gen_ai.request.model": "chat", "gen_ai.response.model": "m-a",
            "server.address": "127.0.0.1"}
        assert list(by_model["m-a"].explicit_bounds)[:3] == [0.01, 0.02, 0.04]
        _, usage = got["gen_ai.client.token.usage"]
        assert usage.unit == "{token}"
        out = [p for p in usage.histogram.data_points
               if attrs(p)["gen_ai.token.type"] == "output"
               and attrs(p)["gen_ai.response.model"] == "m-a"]
        assert [p.sum for p in out] == [8]
        _, op = got["gen_ai.client.operation.duration"]
        failed = [p for p in op.histogram.data_points if attrs(p).get("error.type") == "http_503"]
        assert [p.count for p in failed] == [1]
        _, ttft = got["gen_ai.server.time_to_first_token"]
        assert list(ttft.histogram.data_points[0].explicit_bounds)[:4] == [0.001, 0.005, 0.01,
                                                                          0.02]
    finally:
        gw.stop()
        rx.stop()
        a.stop()
        b.stop()


# ---- the Grafana dashboard ---------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "model-gateway.json"


def test_grafana_dashboard_reads_only_metrics_the_gateway_exports(
        served: dict[str, Any]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names(served["text"])
    exprs = list(dashboard_exprs(dashboard))
    assert len(exprs) >= 25
    read: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)  # every expression parses as PromQL
        assert names, (title, expr)
        assert names <= exported, f"panel {title!r} reads {names - exported}, not exported"
        read |= names
    # The subjects the dashboard is for are all on it.
    for needed in ("gateway_requests_total", "gateway_deployment_requests_total",
                   "gateway_upstream_errors_total", "gateway_time_to_first_token_seconds_bucket",
                   "gateway_deployment_time_to_first_token_seconds_bucket",
                   "gateway_tokens_total", "gateway_cost_usd_total",
                   "gateway_ledger_pending_records", "gateway_limit_store_errors_total",
                   "gateway_pool_requests_waiting", "gateway_model_in_flight"):
        assert needed in read, needed
    # Panels use the dashboard's datasource variable, so it imports into any Grafana.
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_check_would_catch_a_renamed_metric(served: dict[str, Any]) -> None:
    exported = exported_names(served["text"])
    assert "gateway_requests_total" in exported
    assert not metric_names("sum(rate(gateway_request_total[5m]))") <= exported


# ---- the tenant label cap ------------------------------------------------------------------------

def test_tenants_past_the_label_limit_share_one_series(tmp_path: Path) -> None:
    a = FakeOpenAI("a", vllm=True, words=3).start()
    b = FakeOpenAI("b", vllm=True, words=3).start()
    keys = {f"t{i}": generate_key() for i in range(4)}
    pol = policy(tmp_path, a, b, tenant_label_limit=2)
    pol["tenants"] = {t: {"keys": [{"id": f"{t}-key", "hash": hash_key(k)}]}
                      for t, k in keys.items()}
    gw = Gateway(pol, tmp=tmp_path).start()
    try:
        per_request = a.prompt_tokens + 3
        for n, (tenant, key) in enumerate(keys.items(), start=1):
            r = httpx.post(gw.base_url + "/chat/completions", json=CHAT, timeout=10,
                           headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text

            def counted(n: int = n) -> bool:
                got = series(httpx.get(gw.url + "/metrics").text)
                return sum(v for (name, _), v in got.items()
                           if name == "gateway_tokens_total") == n * per_request

            assert wait_until(counted, timeout=10), tenant  # settled in arrival order
        got = series(httpx.get(gw.url + "/metrics").text)
        by_tenant: dict[str, float] = {}
        for (name, labels), v in got.items():
            if name == "gateway_tokens_total":
                tenant = dict(labels)["tenant"]
                by_tenant[tenant] = by_tenant.get(tenant, 0) + v
        assert by_tenant == {"t0": per_request, "t1": per_request, "_other": 2 * per_request}
    finally:
        gw.stop()
        a.stop()
        b.stop()
