"""Liveness, readiness and metrics."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.routing import Route

from gateway.proxy import Proxy
from gateway.responses import RawResponse


def routes(proxy: Proxy) -> list[Route]:
    async def health(request: Request) -> RawResponse:
        return RawResponse(200, b'{"status":"ok"}')

    async def ready(request: Request) -> RawResponse:
        if getattr(proxy, "draining", False):
            # Shutting down (gateway.server calls proxy.begin_drain on SIGTERM): take this
            # replica out of the Service while its requests in flight finish.
            return RawResponse(503, b'{"status":"draining"}')
        rt = proxy.deps.runtime()
        cooling = rt.health.snapshot()
        unhealthy = rt.unavailable()
        auth_ready = proxy.deps.auth.ready
        deployments = {
            d.id: ("cooldown" if cooling.get(d.id) else
                   "unhealthy" if d.id in unhealthy else
                   "disabled" if d.weight == 0 else "ok")
            for route in rt.policy.models.values() for d in route.deployments
        }
        # Ready: a policy is loaded (we are here), issued keys are loaded, and at least one
        # deployment can take traffic.
        ok = auth_ready and any(s == "ok" for s in deployments.values())
        body = {"status": "ready" if ok else "not_ready", "keys_loaded": auth_ready,
                "deployments": deployments}
        return RawResponse(200 if ok else 503, json.dumps(body).encode())

    async def metrics(request: Request) -> RawResponse:
        rt = proxy.deps.runtime()
        if not rt.policy.observability.metrics:
            return RawResponse(404, b'{"error": {"message": "metrics are disabled '
                               b'(observability.metrics)", "type": "invalid_request_error", '
                               b'"param": null, "code": "metrics_disabled"}}')
        m = proxy.deps.metrics
        cooling = rt.health.snapshot()
        for route in rt.policy.models.values():
            for d in route.deployments:
                m.cooldowns.labels(d.id).set(cooling.get(d.id, 0.0))
        proxy.deps.settler.observe()
        # Autoscaling gauges are computed from these as the registry renders (demand.py).
        signals = proxy.deps.signals
        m.settled.demand.update(rt.policy, signals.snapshot(), signals.queue_times.mean_s)
        return RawResponse(200, m.render(), content_type=b"text/plain; version=0.0.4")

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
