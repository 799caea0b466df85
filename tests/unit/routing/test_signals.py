# Exposition fixtures keep vLLM's long lines as served.
# ruff: noqa: E501
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.policy.load import parse_policy
from gateway.routing.signals import (
    EngineMetrics,
    Probe,
    SignalCollector,
    engine_metrics,
    parse_prometheus,
    probes_from_policy,
)
from gateway.upstream import UpstreamClient
from tests.fakes.base import FakeServer, wait_until

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"

# The shape of a vLLM V1 server's /metrics with two data-parallel engines (trimmed): HELP/TYPE
# comments, process metrics, gauges per engine, histogram buckets with `le` labels, info
# metrics whose label values hold commas, and a second model's series.
VLLM_V1 = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 13921.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{LLAMA}"}} 7.0
vllm:num_requests_running{{engine="1",model_name="{LLAMA}"}} 5.0
vllm:num_requests_running{{engine="0",model_name="other-model"}} 40.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{LLAMA}"}} 2.0
vllm:num_requests_waiting{{engine="1",model_name="{LLAMA}"}} 1.0
vllm:num_requests_waiting{{engine="0",model_name="other-model"}} 30.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{LLAMA}"}} 0.5
vllm:kv_cache_usage_perc{{engine="1",model_name="{LLAMA}"}} 0.25
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{LLAMA}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{LLAMA}"}} 61.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{LLAMA}"}} 118.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{LLAMA}"}} 118.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{LLAMA}"}} 21.53
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{{max_lora="2",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters=""}} 1.7398e+09
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",note="a \\"quoted\\", {{braced}} value\\\\n"}} 1.0
vllm:prompt_tokens_total{{engine="0",model_name="{LLAMA}"}} 1.2e+06 1712000000000
vllm:num_requests_waiting_extra{{model_name="{LLAMA}"}} 99.0
"""

# vLLM V0 (before 0.10): no engine label, and the KV gauge under its old name.
VLLM_V0 = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="facebook/opt-125m"} 3.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="facebook/opt-125m"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="facebook/opt-125m"} 4.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.0625
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.0
"""


def test_parser_reads_labels_histograms_timestamps_and_quoted_values() -> None:
    samples = parse_prometheus(VLLM_V1)
    by = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert by[("python_gc_objects_collected_total", (("generation", "0"),))] == 13921.0
    inf_bucket = [s for s in samples if s.name == "vllm:time_to_first_token_seconds_bucket"
                  and s.labels["le"] == "+Inf"]
    assert inf_bucket[0].value == 118.0
    lora = next(s for s in samples if s.name == "vllm:lora_requests_info")
    assert lora.labels == {"max_lora": "2", "running_lora_adapters": "sql-lora,chat-lora",
                           "waiting_lora_adapters": ""}
    info = next(s for s in samples if s.name == "vllm:cache_config_info")
    assert info.labels["note"] == 'a "quoted", {braced} value\\n'
    assert info.labels["engine"] == "0" and info.value == 1.0
    tokens = next(s for s in samples if s.name == "vllm:prompt_tokens_total")
    assert tokens.value == 1.2e6  # the trailing timestamp is not the value


def test_parser_filters_by_exact_name_and_skips_junk() -> None:
    text = VLLM_V1 + "garbage line without value\nvllm:num_requests_waiting{broken 3\n\n"
    samples = parse_prometheus(text, ["vllm:num_requests_waiting"])
    assert [s.value for s in samples] == [2.0, 1.0, 30.0]  # not `_extra`, not the broken line


def test_parser_handles_unlabelled_nan_inf_and_exemplars() -> None:
    text = ('up 1\nnan_metric NaN\nbig +Inf\n'
            'req_total{path="/v1"} 17 # {trace_id="abc#1"} 0.3 1712000000.0\n')
    values = {s.name: s.value for s in parse_prometheus(text)}
    assert values["up"] == 1.0 and values["big"] == float("inf") and values["req_total"] == 17.0
    assert values["nan_metric"] != values["nan_metric"]


def test_engine_metrics_sum_the_models_engines_and_average_kv_usage() -> None:
    m = engine_metrics(VLLM_V1, LLAMA)
    assert m == EngineMetrics(waiting=3, running=12, kv_cache_usage=0.375)


def test_engine_metrics_reads_the_old_gpu_cache_usage_name() -> None:
    assert engine_metrics(VLLM_V0, "facebook/opt-125m") == EngineMetrics(
        waiting=4, running=3, kv_cache_usage=0.0625)


def test_engine_metrics_counts_every_series_when_the_model_name_differs() -> None:
    # A LoRA adapter routed by name: the series carry the base model's name.
    assert engine_metrics(VLLM_V0, "my-lora").running == 3
    assert engine_metrics("", "m") == EngineMetrics()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_flight_counts_and_latency_averages() -> None:
    sc = SignalCollector(ewma_alpha=0.5, clock=Clock())
    sc.begin("a")
    sc.begin("a")
    assert sc.snapshot().load("a").in_flight == 2
    sc.end("a", ok=True, latency_s=2.0, ttft_s=0.2)
    sc.end("a", ok=True, latency_s=4.0, ttft_s=0.4)
    load = sc.snapshot().load("a")
    assert load.in_flight == 0
    assert load.latency_ewma_s == pytest.approx(3.0)
    assert load.ttft_ewma_s == pytest.approx(0.3)
    sc.begin("a")
    sc.end("a", ok=False, latency_s=0.001)  # a fast failure must not look like a fast backend
    assert sc.snapshot().load("a").latency_ewma_s == pytest.approx(3.0)
    sc.end("a", ok=False)  # an unmatched end never goes negative
    assert sc.snapshot().load("a").in_flight == 0
    assert sc.snapshot().load("unknown").in_flight == 0


def test_snapshot_is_cached_until_something_changes() -> None:
    sc = SignalCollector(clock=Clock())
    sc.begin("a")
    first = sc.snapshot()
    assert sc.snapshot() is first
    sc.begin("a")
    assert sc.snapshot() is not first


def test_a_stale_scrape_degrades_to_in_flight_only() -> None:
    clock = Clock()
    sc = SignalCollector(stale_s=15.0, clock=clock)
    sc.begin("a")
    sc.observe("a", EngineMetrics(waiting=5, running=9, kv_cache_usage=0.8))
    load = sc.snapshot().load("a")
    assert (load.waiting, load.running, load.kv_cache_usage, load.in_flight) == (5, 9, 0.8, 1)
    clock.now += 14.0
    assert sc.snapshot().load("a").waiting == 5
    clock.now += 2.0
    load = sc.snapshot().load("a")
    assert (load.waiting, load.running, load.kv_cache_usage, load.in_flight) == (
        None, None, None, 1)


def test_a_failed_scrape_drops_the_previous_values_at_once() -> None:
    sc = SignalCollector(clock=Clock())
    sc.observe("a", EngineMetrics(waiting=5, running=9))
    sc.observe("a", None)
    assert sc.snapshot().load("a").waiting is None


def test_latency_history_ages_out_so_the_endpoint_is_explored_again() -> None:
    clock = Clock()
    sc = SignalCollector(latency_ttl_s=60.0, clock=clock)
    sc.end("a", ok=True, latency_s=9.0)
    assert sc.snapshot().load("a").latency_ewma_s == 9.0
    clock.now += 61.0
    assert sc.snapshot().load("a").latency_ewma_s is None
    sc.end("a", ok=True, latency_s=1.0)  # starts afresh rather than averaging with 9.0
    assert sc.snapshot().load("a").latency_ewma_s == 1.0


def test_unhealthy_after_consecutive_failed_health_probes() -> None:
    sc = SignalCollector(unhealthy_after=2, clock=Clock())
    sc.observe_health("a", False)
    assert sc.unhealthy_ids() == frozenset()
    sc.observe_health("a", False)
    assert sc.unhealthy_ids() == {"a"}
    sc.observe_health("a", True)
    assert sc.unhealthy_ids() == frozenset()


def test_probes_from_policy_cover_self_hosted_and_explicit_metrics_urls() -> None:
    text = """
providers:
  gpu: {kind: vllm, base_url: "http://gpu-a:8000/v1"}
  cpu: {kind: local}
  groq: {kind: openai-compatible, base_url: "https://api.groq.com/openai/v1"}
  tgi: {kind: openai-compatible, base_url: "http://tgi:80/v1", metrics_url: "http://tgi:80/m"}
models:
  llama:
    deployments:
      - {provider: gpu, model: llama-8b}
      - {provider: cpu, model: tiny}
      - {provider: groq, model: llama-3.1-8b-instant}
      - {provider: tgi, model: llama}
  alias:
    deployments: [{provider: gpu, model: llama-8b}]
"""
    policy = parse_policy(text, "p.yaml", {})
    probes = {p.deployment_id: p for p in probes_from_policy(
        policy, base_urls={"cpu": "http://127.0.0.1:9001/v1"})}
    assert probes == {
        "gpu/llama-8b": Probe("gpu/llama-8b", "llama-8b", "http://gpu-a:8000/metrics",
                              "http://gpu-a:8000/health"),
        "cpu/tiny": Probe("cpu/tiny", "tiny", "http://127.0.0.1:9001/metrics",
                          "http://127.0.0.1:9001/health"),
        "tgi/llama": Probe("tgi/llama", "llama", "http://tgi:80/m", None),
    }


class MetricsServer(FakeServer):
    """A loopback vLLM stand-in: serves the scripted exposition and health status."""

    def __init__(self, text: str) -> None:
        super().__init__("vllm-metrics")
        self.text = text
        self.metrics_status = 200
        self.health_status = 200
        self.scrapes = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)

    async def metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(status=self.metrics_status, text=self.text,
                            content_type="text/plain")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health_status, text="")


def _probe(server: MetricsServer, did: str = "gpu") -> Probe:
    return Probe(did, LLAMA, server.url + "/metrics", server.url + "/health")


@pytest.mark.asyncio
async def test_scraper_reads_a_real_metrics_endpoint_and_degrades_when_it_fails() -> None:
    server = MetricsServer(VLLM_V1)
    with server:
        client = UpstreamClient(max_connections=4)
        sc = SignalCollector([_probe(server)], client=client, unhealthy_after=2)
        try:
            await sc.scrape_once()
            load = sc.snapshot().load("gpu")
            assert (load.waiting, load.running, load.kv_cache_usage) == (3, 12, 0.375)
            assert sc.unhealthy_ids() == frozenset()

            server.metrics_status = 500
            server.health_status = 503
            await sc.scrape_once()
            assert sc.snapshot().load("gpu").waiting is None
            await sc.scrape_once()
            assert sc.unhealthy_ids() == {"gpu"}

            server.metrics_status = server.health_status = 200
            await sc.scrape_once()
            assert sc.snapshot().load("gpu").waiting == 3
            assert sc.unhealthy_ids() == frozenset()
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_scraper_marks_a_refusing_endpoint_unhealthy() -> None:
    server = MetricsServer(VLLM_V1)
    server.start()
    probe = _probe(server)
    server.stop()  # nothing listens on the port any more
    sc = SignalCollector([probe], unhealthy_after=1, timeout_s=1.0)
    try:
        await sc.scrape_once()
        assert sc.snapshot().load("gpu").waiting is None
        assert sc.unhealthy_ids() == {"gpu"}
    finally:
        await sc.stop()


@pytest.mark.asyncio
async def test_background_task_scrapes_on_its_interval_until_stopped() -> None:
    server = MetricsServer(VLLM_V0)
    with server:
        sc = SignalCollector([Probe("old", "facebook/opt-125m", server.url + "/metrics", None)],
                             interval_s=0.05)
        sc.start()
        try:
            assert sc.running
            assert await asyncio.to_thread(wait_until, lambda: server.scrapes >= 3, 5.0)
            assert sc.snapshot().load("old").kv_cache_usage == 0.0625
        finally:
            await sc.stop()
        assert not sc.running
