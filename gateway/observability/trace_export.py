"""Where spans go: exporters named by the OTEL_* environment, and the gateway's own tracer
provider (never the global one)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace

log = logging.getLogger("gateway.tracing")


def exporters_from_env(env: Mapping[str, str] | None = None) -> list[Any]:
    """Span exporters named by `OTEL_TRACES_EXPORTER` (comma-separated, default `otlp`):
    `otlp` if `opentelemetry-exporter-otlp` is installed (protocol from `OTEL_EXPORTER_OTLP_
    [TRACES_]PROTOCOL`, `http/protobuf` or `grpc`; the exporter reads its endpoint and headers
    itself), `console`, `none`. `OTEL_SDK_DISABLED=true` disables everything."""
    def console() -> Any:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()

    return named_exporters(env, "OTEL_TRACES_EXPORTER", _otlp, console)


def named_exporters(env: Mapping[str, str] | None, variable: str,
                    otlp: Callable[[Mapping[str, str]], Any], console: Callable[[], Any]
                    ) -> list[Any]:
    """The exporters `variable` names (comma-separated, default `otlp`), for any signal:
    `otlp` (None when its package is missing), `console`, `none`; `OTEL_SDK_DISABLED=true`
    disables everything."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    out: list[Any] = []
    for name in env.get(variable, "otlp").split(","):
        name = name.strip().lower()
        if name == "otlp":
            exporter = otlp(env)
            if exporter is not None:
                out.append(exporter)
        elif name == "console":
            out.append(console())
        elif name not in ("none", ""):
            log.warning("%s names %r, which this gateway does not know "
                        "(known: otlp, console, none); ignoring it", variable, name)
    return out


def gateway_resource() -> Any:
    """The OTel resource from OTEL_RESOURCE_ATTRIBUTES, named `model-gateway` if unnamed."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "model-gateway"}))
    return resource


def _otlp(env: Mapping[str, str]) -> Any:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
    except ImportError:
        log.warning("tracing: the OTLP exporter (%s) is not installed; pip install "
                    "opentelemetry-exporter-otlp, or set OTEL_TRACES_EXPORTER=console", protocol)
        return None
    return OTLPSpanExporter()


def make_tracer(given: Any, env: Mapping[str, str] | None) -> tuple[trace.Tracer | None, Any]:
    """A tracer from our own SDK provider (never the global one: several apps may share a
    process, and the gateway must not change what a host application set up)."""
    if given is not None:
        return given.get_tracer("gateway"), None
    exporters = exporters_from_env(env)
    if not exporters:
        log.warning("observability.tracing is on but no span exporter is configured; traces "
                    "are off (set OTEL_TRACES_EXPORTER and install opentelemetry-exporter-otlp)")
        return None, None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = gateway_resource()
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on) and the
    # batch sizes from OTEL_BSP_*: the SDK reads them itself.
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        # Batching moves export off the request path, onto the processor's thread.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer("gateway"), provider
