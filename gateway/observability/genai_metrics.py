"""OpenTelemetry GenAI metrics, from settled ledger records, recorded once and exported in
two forms (histograms.py):

- on `/metrics`, as Prometheus histograms named the way the OpenTelemetry→Prometheus
  conversion names them (`gen_ai.server.request.duration` in seconds →
  `gen_ai_server_request_duration_seconds`, attribute `gen_ai.request.model` → label
  `gen_ai_request_model`; `{token}` units add no suffix), always;
- over OTLP, with the conventions' names, units and attributes, when
  `observability.otlp_metrics` is on (metric_export.py reads the same histograms).

The gateway is a GenAI *server* to its clients (`gen_ai.server.*`, one observation per
request) and a GenAI *client* of its upstreams (`gen_ai.client.*`, one per attempt).
Conventions: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/ — bucket
boundaries below are the ones they give.

Cost: everything here runs in the settle task, after the response ended. Label children are
looked up once per label combination and cached, so a request costs a few dict lookups and
bisects, and allocates nothing that outlives it.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.observability.histograms import Child, HistogramFamily
from gateway.observability.labels import OPERATION, provider_facts, reason_code

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

# (OpenTelemetry name, unit, description, buckets): the instruments, in both forms.
INSTRUMENTS = {
    "token_usage": ("gen_ai.client.token.usage", "{token}",
                    "Number of input and output tokens used per upstream call", TOKEN_BUCKETS),
    "operation_duration": ("gen_ai.client.operation.duration", "s",
                           "Duration of each upstream GenAI call", DURATION_BUCKETS),
    "request_duration": ("gen_ai.server.request.duration", "s",
                         "Duration of each request the gateway served, to its last byte",
                         DURATION_BUCKETS),
    "ttft": ("gen_ai.server.time_to_first_token", "s",
             "Time to the first token of successful streamed responses", TTFT_BUCKETS),
    "tpot": ("gen_ai.server.time_per_output_token", "s",
             "Time per output token after the first, successful streamed responses",
             TPOT_BUCKETS),
}

SERVER_ATTRS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                "gen_ai.response.model", "error.type", "server.address")
CLIENT_ATTRS = SERVER_ATTRS
TOKEN_ATTRS = (*CLIENT_ATTRS, "gen_ai.token.type")

_UNITS = {"s": "_seconds", "{token}": ""}
_CACHE_LIMIT = 4096  # label sets; values are bounded by the policy, this bounds a bug


def prometheus_name(otel_name: str, unit: str) -> str:
    """`gen_ai.server.request.duration` + `s` → `gen_ai_server_request_duration_seconds`."""
    return otel_name.replace(".", "_") + _UNITS[unit]


def _label(attr: str) -> str:
    return attr.replace(".", "_")


class GenAIMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(key: str, attrs: tuple[str, ...]) -> HistogramFamily:
            name, unit, doc, buckets = INSTRUMENTS[key]
            return HistogramFamily(prometheus_name(name, unit), doc, [_label(a) for a in attrs],
                                   buckets, registry, otel_name=name, otel_unit=unit,
                                   otel_attrs=attrs)

        self.token_usage = hist("token_usage", TOKEN_ATTRS)
        self.operation_duration = hist("operation_duration", CLIENT_ATTRS)
        self.request_duration = hist("request_duration", SERVER_ATTRS)
        self.ttft = hist("ttft", SERVER_ATTRS)
        self.tpot = hist("tpot", SERVER_ATTRS)
        self.families = (self.token_usage, self.operation_duration, self.request_duration,
                         self.ttft, self.tpot)
        self._policy: Any = None
        self._providers: dict[str, tuple[str, str]] = {}
        self._server: dict[tuple[str, str, str, str | None, int], _Server] = {}
        self._client: dict[tuple[str, str, str, str, str | None], _Client] = {}

    # ---- recording ---------------------------------------------------------------------------

    def observe(self, record: RequestRecord, policy: Any) -> None:
        """One settled request: its server observation and one client observation per
        upstream attempt."""
        if policy is not self._policy:
            self._policy = policy
            self._providers = {}
            self._server.clear()
            self._client.clear()
        model = record.model if record.model in policy.models else "_unknown"
        op = OPERATION.get(record.endpoint, record.endpoint)
        serving = _serving(record)
        for a in record.attempts:
            self._attempt(a, model, op)
        key = (model, serving.deployment if serving else "", record.endpoint,
               record.error_code, record.status)
        s = self._server.get(key)
        if s is None:
            s = self._server_children(key, model, op, serving, record)
        seconds = record.latency_ms / 1000
        s.duration.observe(seconds)
        ttft_ms = record.ttft_ms
        if ttft_ms is None or serving is None or record.status >= 400 or record.error_code:
            return  # the conventions time successful responses only
        ttft = ttft_ms / 1000
        if s.ttft is None:  # made on first use: no empty series for label sets never timed
            s.ttft = self.ttft.labels(*s.values)
        s.ttft.observe(ttft)
        usage = serving.usage
        out = usage.completion_tokens if usage is not None else 0
        if out > 1:
            if s.tpot is None:
                s.tpot = self.tpot.labels(*s.values)
            s.tpot.observe(max(0.0, seconds - ttft) / (out - 1))

    def _attempt(self, a: AttemptRecord, model: str, op: str) -> None:
        error = None if a.outcome == "ok" or a.outcome == "drained" else (
            reason_code(a.error) if a.error else a.outcome)
        key = (a.deployment, a.provider, model, op, error)
        c = self._client.get(key)
        if c is None:
            c = self._client_children(key, a, model, op, error)
        c.duration.observe(a.duration_ms / 1000)
        u = a.usage
        if u is None:
            return
        t_in, t_out = c.tokens_in, c.tokens_out
        if t_in is None or t_out is None:  # on first use: a failed attempt has no token series
            t_in = c.tokens_in = self.token_usage.labels(*c.values, "input")
            t_out = c.tokens_out = self.token_usage.labels(*c.values, "output")
        # Billable counts, inclusive as the conventions count them: input includes cached
        # tokens, output includes reasoning tokens.
        t_in.observe(u.prompt_tokens)
        t_out.observe(u.completion_tokens)

    # ---- label sets, built once ----------------------------------------------------------------

    def _facts(self, provider_name: str) -> tuple[str, str]:
        facts = self._providers.get(provider_name)
        if facts is None:
            cfg = self._policy.providers.get(provider_name) if self._policy else None
            facts = self._providers[provider_name] = provider_facts(cfg)
        return facts

    def _server_children(self, key: tuple[str, str, str, str | None, int], model: str, op: str,
                         serving: AttemptRecord | None, record: RequestRecord) -> _Server:
        provider, address = self._facts(serving.provider) if serving else ("", "")
        error = None
        if record.status >= 400 or record.error_code:  # a stream can fail after its 200
            error = record.error_code or f"http_{record.status}"
        values = (op, provider, model, serving.upstream_model if serving else "", error or "",
                  address)
        s = _Server(self.request_duration.labels(*values), values)
        if len(self._server) < _CACHE_LIMIT:
            self._server[key] = s
        return s

    def _client_children(self, key: tuple[str, str, str, str, str | None], a: AttemptRecord,
                         model: str, op: str, error: str | None) -> _Client:
        provider, address = self._facts(a.provider)
        values = (op, provider, model, a.upstream_model, error or "", address)
        c = _Client(self.operation_duration.labels(*values), values)
        if len(self._client) < _CACHE_LIMIT:
            self._client[key] = c
        return c


class _Server:
    __slots__ = ("duration", "tpot", "ttft", "values")

    def __init__(self, duration: Child, values: tuple[str, ...]) -> None:
        self.duration, self.values = duration, values
        self.ttft: Child | None = None
        self.tpot: Child | None = None


class _Client:
    __slots__ = ("duration", "tokens_in", "tokens_out", "values")

    def __init__(self, duration: Child, values: tuple[str, ...]) -> None:
        self.duration, self.values = duration, values
        self.tokens_in: Child | None = None
        self.tokens_out: Child | None = None


def _serving(record: RequestRecord) -> AttemptRecord | None:
    """The attempt that answered the client: the last one, unless every attempt failed."""
    if not record.attempts:
        return None
    last = record.attempts[-1]
    return last if last.outcome != "error" else None
