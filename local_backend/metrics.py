"""Prometheus metrics under vLLM's names, so the gateway scrapes a local backend like vLLM.

Names and labels follow vLLM's V1 engine (`vllm:num_requests_running{model_name=…}` etc.;
https://docs.vllm.ai/en/latest/design/metrics.html). Load gauges are read from the engine at
scrape time; counters and the histogram are fed by the engine's events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from local_backend.engine.sequence import FinishReason
from local_backend.engine.torch_engine import EngineLoad

# vLLM's buckets for time to first token, in seconds.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)


class BackendMetrics:
    """One registry per server (no process-global state, so tests can run several)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self._model = model_name
        labels = ["model_name"]
        r = self.registry
        self._prompt = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r
        ).labels(model_name)
        self._generation = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        ).labels(model_name)
        self._prefix_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels,
            registry=r,
        ).labels(model_name)
        self._prefix_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels,
            registry=r,
        ).labels(model_name)
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        ).labels(model_name)
        self._success = Counter(
            "vllm:request_success",
            "Count of finished requests, by finish reason.",
            [*labels, "finished_reason"],
            registry=r,
        )
        # Not vLLM's: decode forward passes and the rows they carried. sequence_steps above
        # decode_steps is direct evidence that concurrent requests shared decode steps.
        self._decode_steps = Counter(
            "local_backend:decode_steps", "Batched decode forward passes.", labels, registry=r
        ).labels(model_name)
        self._decode_rows = Counter(
            "local_backend:decode_sequence_steps",
            "Sequences advanced by decode forward passes (sum of batch sizes).",
            labels,
            registry=r,
        ).labels(model_name)

    def watch_load(self, load: Callable[[], EngineLoad]) -> None:
        """Report the engine's running/waiting/KV gauges, read at each scrape."""
        self.registry.register(_LoadCollector(self._model, load))

    def report_cache(self, prefix_cache_tokens: int) -> None:
        """Export vLLM's info gauge `vllm:cache_config_info` (value 1, the config in labels,
        no `model_name`, one series per `engine`): the gateway's prefix-load takes a
        backend's cache size from it, `num_gpu_blocks` × `block_size`, and assumes far more
        than this engine holds without it. The local engine caches whole prompts under a
        token budget, not in blocks, so a block here is one token and the product is exact."""
        labels = {"block_size": "1", "cache_dtype": "auto",
                  "enable_prefix_caching": str(prefix_cache_tokens > 0),
                  "num_gpu_blocks": str(prefix_cache_tokens), "num_cpu_blocks": "0",
                  "engine": "0"}
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              list(labels), registry=self.registry).labels(**labels).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # EngineObserver ------------------------------------------------------------------------

    def on_prefill(self, prompt_tokens: int, cached_tokens: int) -> None:
        self._prompt.inc(prompt_tokens)
        self._prefix_queries.inc(prompt_tokens)
        self._prefix_hits.inc(cached_tokens)

    def on_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def on_tokens(self, count: int) -> None:
        self._generation.inc(count)

    def on_finished(self, reason: FinishReason) -> None:
        self._success.labels(self._model, reason).inc()

    def on_decode_step(self, batch_size: int) -> None:
        self._decode_steps.inc()
        self._decode_rows.inc(batch_size)


class _LoadCollector(Collector):
    def __init__(self, model_name: str, load: Callable[[], EngineLoad]) -> None:
        self._model = model_name
        self._load = load

    def collect(self) -> Iterator[GaugeMetricFamily]:
        load = self._load()
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             load.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             load.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             load.kv_usage),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model], float(value))
            yield family
