"""OTLP export of the GenAI histograms when `observability.otlp_metrics` is on: a thread that,
every interval, reads the same histograms `/metrics` renders (histograms.py) and hands them to
the OpenTelemetry SDK's exporters as cumulative histogram points. Nothing is recorded twice:
the request path pays for one observation whether OTLP is on or not.

Exporters come from the OTEL_* environment, as trace_export.py does for spans:

    OTEL_METRICS_EXPORTER          otlp (default), console, none; comma-separated
    OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL   http/protobuf (default) or grpc
    OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT   read by the exporter itself
    OTEL_METRIC_EXPORT_INTERVAL    milliseconds between exports (default 60000)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.observability.histograms import HistogramFamily
from gateway.observability.trace_export import gateway_resource, named_exporters

log = logging.getLogger("gateway.metrics")


def metric_exporters(env: Mapping[str, str] | None = None) -> list[Any]:
    def console() -> Any:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()

    return named_exporters(env, "OTEL_METRICS_EXPORTER", _otlp, console)


def _otlp(env: Mapping[str, str]) -> Any:
    protocol = (env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[no-redef]
                OTLPMetricExporter,
            )
    except ImportError:
        log.warning("metrics: the OTLP exporter (%s) is not installed; pip install "
                    "opentelemetry-exporter-otlp, or set OTEL_METRICS_EXPORTER=console",
                    protocol)
        return None
    return OTLPMetricExporter()


def _interval_s(env: Mapping[str, str]) -> float:
    raw = env.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    try:
        return max(float(raw) / 1000, 0.05)
    except ValueError:
        log.warning("OTEL_METRIC_EXPORT_INTERVAL=%r is not a number of milliseconds; "
                    "exporting every 60 s", raw)
        return 60.0


class OtlpMetricExport:
    """Export `families` (those with an OpenTelemetry name) every interval, on a thread."""

    def __init__(self, families: Sequence[HistogramFamily], exporters: list[Any],
                 interval_s: float = 60.0) -> None:
        self._families = [f for f in families if f.otel_name]
        self._exporters = exporters
        self._interval = interval_s
        self._resource = gateway_resource()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, families: Sequence[HistogramFamily],
                 env: Mapping[str, str] | None = None) -> OtlpMetricExport | None:
        env = os.environ if env is None else env
        exporters = metric_exporters(env)
        if not exporters:
            log.warning("observability.otlp_metrics is on but no metric exporter is "
                        "configured; GenAI metrics stay on /metrics only (set "
                        "OTEL_METRICS_EXPORTER and install opentelemetry-exporter-otlp)")
            return None
        return cls(families, exporters, _interval_s(env))

    def metrics_data(self) -> Any:
        """What one export sends: every histogram, cumulative since each series began."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        now = time.time_ns()
        metrics = []
        for fam in self._families:
            points = [
                HistogramDataPoint(attributes=attrs, start_time_unix_nano=start,
                                   time_unix_nano=now, count=sum(counts), sum=total,
                                   bucket_counts=counts, explicit_bounds=fam.bounds,
                                   min=None, max=None)  # type: ignore[arg-type]  # not kept
                for attrs, counts, total, start in fam.otel_points()]
            if points:
                metrics.append(Metric(fam.otel_name or fam.name, fam.doc, fam.otel_unit,
                                      Histogram(points, AggregationTemporality.CUMULATIVE)))
        scope = InstrumentationScope("gateway")
        return MetricsData([ResourceMetrics(self._resource,
                                            [ScopeMetrics(scope, metrics, "")], "")])

    def export_once(self) -> None:
        data = self.metrics_data()
        if not data.resource_metrics[0].scope_metrics[0].metrics:
            return
        for exporter in self._exporters:
            try:
                exporter.export(data, timeout_millis=10_000)
            except Exception:
                log.warning("OTLP metric export failed", exc_info=True)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.export_once()

    def shutdown(self) -> None:
        """The last export, then the exporters close (app shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        self.export_once()
        for exporter in self._exporters:
            try:
                exporter.shutdown()
            except Exception:
                log.warning("OTLP metric exporter shutdown failed", exc_info=True)
