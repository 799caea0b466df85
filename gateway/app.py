"""build_app(policy) -> Starlette. The lifespan opens and closes everything that lives longer
than a request: upstream pools, the ledger writer, the limiter, signal scrapes, local backends,
the policy watcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import console
from gateway.accounting.estimate import warm_up
from gateway.accounting.gpu_lifetimes import GpuLifetimes
from gateway.accounting.settle import Settler
from gateway.alerts import Alerter
from gateway.api import admin as admin_api
from gateway.api import admin_status as admin_status_api
from gateway.api import alerts_admin as alerts_api
from gateway.api import count_tokens as count_tokens_api
from gateway.api import health as health_api
from gateway.api import messages as messages_api
from gateway.api import moderations as moderations_api
from gateway.api import openai as openai_api
from gateway.api import openapi as openapi_api
from gateway.api import rerank as rerank_api
from gateway.api import responses as responses_api
from gateway.api import rollouts as rollouts_api
from gateway.api.anthropic_codec import CODEC as ANTHROPIC_CODEC
from gateway.api.responses_ingress import ResponsesIngress
from gateway.auth import Authenticator
from gateway.conversation import ResponseStore
from gateway.errors import GatewayError
from gateway.flow.metrics import FlowMetrics
from gateway.flow.stage import FlowControl
from gateway.limits.base import Limiter
from gateway.observability.logs import configure_logging
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import Tracing
from gateway.policy.history import PolicyHistory
from gateway.policy.load import policy_warnings
from gateway.policy.models import Policy
from gateway.policy.reload import PolicyWatcher, ReloadRefused, restart_required
from gateway.proxy import Proxy
from gateway.responses import error_response
from gateway.rollouts import RolloutController
from gateway.rollouts.shadow import ShadowTraffic
from gateway.routing.health import Health
from gateway.routing.signals import SignalCollector, probes_from_policy
from gateway.runtime import Deps, Runtime
from gateway.stages.cache_metrics import CacheMetrics
from gateway.supervisor import LocalBackends
from gateway.upstream import UpstreamClient

log = logging.getLogger("gateway.app")


class _State:
    """The one mutable reference: the current runtime. Reload swaps it whole."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.pools: dict[str, tuple[Any, UpstreamClient]] = {}

    def current(self) -> Runtime:
        rt = self.runtime
        if rt is None:
            raise GatewayError("The gateway is starting; retry in a moment.", status=503,
                               type="service_unavailable", code="starting")
        return rt


def build_app(policy: Policy, *, policy_path: str | None = None) -> Starlette:
    configure_logging()
    state = _State()
    metrics = Metrics()
    health = Health(policy.router.circuit_breaker, tenants=len(policy.tenants))
    alerts = Alerter(policy, metrics=metrics)  # webhooks (docs/alerts.md)
    health.on_open(alerts.circuit_opened)
    signals = SignalCollector.from_policy(policy)
    limiter = _build_limiter(policy, metrics, alerts.budget_alert)
    alerts.limiter = limiter
    auth = Authenticator.from_policy(policy)
    settler = Settler.from_policy(policy, limiter, metrics)
    settler.listeners.append(alerts.request_settled)
    # GenAI histograms, per-deployment series, demand signals (observability/request_metrics.py)
    settler.listeners.append(lambda r: metrics.settled.observe(r, settler.policy))
    settler.listeners.append(metrics.guards_settled)  # guard verdicts (gateway/guards)
    settler.listeners.append(metrics.spills_settled)  # spill decisions (routing/spill.py)
    gpu_lifetimes = GpuLifetimes.from_policy(policy)  # what GPU-hour billing charges for
    # Stored Responses API responses (previous_response_id), beside the ledger.
    responses_store = ResponseStore.from_policy(policy)
    responses = ResponsesIngress(responses_store, lambda: state.current().policy)
    deps = Deps(runtime=state.current, auth=auth, limiter=limiter, settler=settler,
                signals=signals, metrics=metrics,
                codecs={"anthropic": ANTHROPIC_CODEC, "responses": responses},
                tracing=Tracing.from_policy(policy), alerts=alerts)
    rollouts = deps.rollouts = RolloutController.from_policy(
        policy, metrics.registry, deps.tracing, lambda: deps.alerts)
    proxy = Proxy(deps)
    rollouts.shadow = ShadowTraffic(proxy)  # copies of baseline requests to the candidate
    backends = LocalBackends(policy)
    # Flow-control pools (gateway/flow), kept across reloads: queued requests survive them.
    flow = FlowControl(FlowMetrics(metrics.registry, metrics.settled.tenants))
    # Response cache series (gateway/stages/cache_metrics.py); savings counted as records settle.
    cache_metrics = CacheMetrics(metrics.registry, metrics.settled.tenants)
    settler.listeners.append(cache_metrics.settled)

    def install(new: Policy) -> None:
        """Build a runtime for `new` and swap it in; in-flight requests keep the old one."""
        new = backends.resolve(new)
        pools = Runtime.clients_for(new, state.pools)
        rollouts.set_policy(new)
        rt = Runtime(new, {n: c for n, (_, c) in pools.items()}, health, signals,
                     lambda: _unavailable(new, signals, backends), rollouts, flow,
                     cache_metrics=cache_metrics)
        old_pools = state.pools
        state.pools = pools
        state.runtime = rt
        signals.set_probes(probes_from_policy(new))
        for name, (_cfg, client) in old_pools.items():
            if pools.get(name, (None, None))[1] is not client:
                proxy.spawn(client.close())

    current = [policy]

    async def reload(new: Policy) -> None:
        # Everything that can fail comes first, so a refused reload has changed nothing.
        restart = restart_required(current[0], new)
        if restart:
            raise ReloadRefused(f"{', '.join(restart)} changed; these take effect only at "
                                "start: restart the gateway to apply them")
        try:
            await auth.prepare(new)
        except RuntimeError as e:
            raise ReloadRefused(str(e)) from None
        await backends.reconcile(new)
        current[0] = new
        _log_warnings(new)
        health.configure(new.router.circuit_breaker, len(new.tenants))
        install(new)
        auth.set_policy(new)
        if limiter is not None:
            limiter.set_policy(new)  # type: ignore[attr-defined]
        settler.update(new, state.current().prices)
        gpu_lifetimes.update(new)
        deps.tracing.update(new)
        alerts.update(new)

    history = PolicyHistory.start(policy, policy_path)  # the console's policy page
    watcher = PolicyWatcher(policy_path, reload, metrics, history=history) \
        if policy_path else None
    console_routes, close_console = console.mount(proxy, auth, settler, history, gpu_lifetimes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backends.start()
        await backends.wait_ready()  # serve (and say ready) only with the local models up
        install(policy)
        _log_warnings(policy)
        # Loading a tokenizer takes about a second; the first record needing an estimate (a
        # stream cut at shutdown, say) must not pay it, and start-up must not wait for it.
        # Without estimates nothing needs it at once (about 140 MB resident saved): a token
        # count request loads it on first use.
        if policy.accounting.estimate_missing_usage:
            threading.Thread(target=warm_up, name="tokenizers", daemon=True, args=(
                sorted({d.model for r in policy.models.values() for d in r.deployments}),
            )).start()
        await auth.start()
        await alerts.start()  # before anything that may alert
        await settler.start()
        await gpu_lifetimes.start()
        await responses_store.start()
        purge = asyncio.get_running_loop().create_task(_purge_expired(responses_store))
        signals.start()
        await rollouts.start()  # reads the shared state before the first request
        if watcher is not None:
            watcher.start()
        log.info("gateway ready: %d models, %d providers", len(policy.models),
                 len(policy.providers))
        try:
            yield
        finally:
            if watcher is not None:
                await watcher.stop()
            await signals.stop()
            await proxy.drain()
            await rollouts.stop()  # after the drain: the last requests' counts are flushed
            deps.request_log.flush()
            await settler.close()
            await alerts.close()
            await gpu_lifetimes.close()
            purge.cancel()
            await responses_store.close()
            deps.tracing.shutdown()  # after drain: settle tasks end their spans first
            metrics.settled.shutdown()  # the last OTLP metric export, if on
            await auth.close()
            await close_console()
            if limiter is not None:
                await limiter.close()
            for _, client in state.pools.values():
                await client.close()
            await backends.stop()

    proxied: list[BaseRoute] = [*openai_api.routes(proxy), *messages_api.routes(proxy),
                                *rerank_api.routes(proxy), *moderations_api.routes(proxy),
                                *responses_api.routes(proxy, responses)]
    routes: list[BaseRoute] = [
        *proxied,
        *count_tokens_api.routes(proxy),
        *health_api.routes(proxy),
        *admin_api.routes(proxy, auth, settler),
        *admin_status_api.routes(proxy, history),
        console_routes,
        *rollouts_api.routes(proxy, rollouts),
        *alerts_api.routes(alerts, lambda: state.current().policy.server.admin_key),
        *openapi_api.routes(),
    ]

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        r = error_response(GatewayError("The gateway hit an internal error; it has been logged. "
                                        "Retry the request."))
        return Response(r.body, r.status, media_type="application/json")

    async def not_found(request: Request, exc: Exception) -> Response:
        e = GatewayError(f"Unknown path {request.url.path}. The OpenAI-compatible API is under "
                         "/v1 (chat/completions, completions, embeddings, models).",
                         status=404, type="invalid_request_error", code="unknown_url")
        r = error_response(e)
        return Response(r.body, 404, media_type="application/json")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        # RFC 9110 requires `Allow` on a 405. Starlette's names only the first route matching
        # the path; a path served by two routes (GET and POST /admin/keys) needs them all.
        path = request.url.path
        methods = sorted({m for r in routes if isinstance(r, Route) and r.methods
                          and r.path_regex.match(path) for m in r.methods})
        e = GatewayError(f"Method {request.method} is not allowed on {path}. Allowed: "
                         f"{', '.join(methods)}.", status=405, type="invalid_request_error",
                         code="method_not_allowed")
        r = error_response(e)
        return Response(r.body, 405, headers={"Allow": ", ".join(methods)},
                        media_type="application/json")

    app = _Gateway(routes=routes, lifespan=lifespan,
                   exception_handlers={Exception: unexpected, 404: not_found,
                                       405: not_allowed})
    app.hot = {r.path: r.endpoint for r in proxied
               if isinstance(r, Route) and r.methods == {"POST"}}
    app.state.proxy = proxy
    app.state.deps = deps
    app.state.backends = backends
    return app


async def _purge_expired(store: ResponseStore, every_s: float = 3600.0) -> None:
    """Delete expired stored responses (reads already skip them) once an hour."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await store.purge_expired()
        except Exception:
            log.warning("purging expired stored responses failed; retrying in an hour",
                        exc_info=True)


def _log_warnings(policy: Policy) -> None:
    """What `gateway policy check` warns about, in the log of the gateway that serves it."""
    for w in policy_warnings(policy):
        log.warning("policy: %s", w.render("policy"))


def _unavailable(policy: Policy, signals: SignalCollector, backends: LocalBackends
                 ) -> frozenset[str]:
    """Deployments failing active health checks, or on a local backend still starting."""
    starting = backends.starting()
    if not starting:
        return signals.unhealthy_ids()
    return signals.unhealthy_ids() | frozenset(
        d.id for route in policy.models.values() for d in route.deployments
        if d.provider in starting)


class _Gateway(Starlette):
    """Starlette, with the proxied POST routes served without its middleware stack.

    On those routes the stack (error and exception middleware, the router's match over every
    route, two exception-handler wrappers) costs ~15 µs of CPU per request and adds nothing:
    the handlers already return their errors as responses (docs/benchmarks.md). An
    unexpected exception still becomes the same logged 500; every other path, and lifespan,
    go through Starlette unchanged."""

    hot: dict[str, Any]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = self.hot.get(scope["path"]) if scope["type"] == "http" \
            and scope["method"] == "POST" else None
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            response = error_response(GatewayError(
                "The gateway hit an internal error; it has been logged. Retry the request."))
        await response(scope, receive, send)


def _build_limiter(policy: Policy, metrics: Metrics, on_budget_alert: Any = None) -> Limiter:
    """Built even in open mode, so tenants added by a reload are limited at once (the proxy
    skips admission while the policy has no tenants). Changing `state.redis_url` needs a
    restart."""
    if policy.state.redis_url:
        from gateway.limits.redis import RedisLimiter

        return RedisLimiter.from_policy(policy, metrics, on_budget_alert)
    from gateway.limits.memory import MemoryLimiter

    return MemoryLimiter.from_policy(policy, metrics, on_budget_alert)
