"""What the request path runs against: the per-policy runtime (swapped whole on reload) and the
app-lifetime dependencies. Built once in `build_app`; no module singletons."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.accounting.estimate import estimate_prompt_tokens
from gateway.accounting.pricing import PriceBook
from gateway.alerts import Alerter
from gateway.call import Call, Principal
from gateway.limits.base import Estimate, Limiter
from gateway.observability.logs import RequestLog
from gateway.observability.tracing import Tracing
from gateway.policy.models import Policy, ProviderBase
from gateway.providers.base import Adapter
from gateway.providers.registry import build_adapter
from gateway.routing.health import Health
from gateway.routing.plan import Router
from gateway.stages.base import Reserves, Stage
from gateway.stages.registry import build_stages
from gateway.upstream import UpstreamClient


class Runtime:
    """Everything derived from one policy. Requests hold the runtime they started with, so a
    reload never changes a request mid-flight."""

    def __init__(self, policy: Policy, clients: dict[str, UpstreamClient],
                 health: Health, signals: Any,
                 unavailable: Callable[[], frozenset[str]] | None = None,
                 rollouts: Any = None, flow: Any = None, cache_metrics: Any = None) -> None:
        self.policy = policy
        self.clients = clients
        self.health = health
        self.signals = signals
        # gateway.flow.FlowControl: the app's flow-control pools, kept across reloads (the
        # flow stage reconfigures them for this policy).
        self.flow = flow
        # gateway.stages.cache_metrics.CacheMetrics: the app's cache series (the cache stage
        # of every reload counts into them).
        self.cache_metrics = cache_metrics
        self.adapters: dict[str, Adapter] = {
            name: build_adapter(name, cfg) for name, cfg in policy.providers.items()
        }
        self.unavailable = unavailable or signals.unhealthy_ids
        self.router = Router(policy, health, signals.snapshot, self.unavailable, rollouts)
        self.prices = PriceBook.from_policy(policy)
        # Request stages (guards, response cache), in run order; empty: none configured, and
        # the request path skips every stage hook (gateway/stages/base.py).
        self.stages: tuple[Stage, ...] = build_stages(policy, self)
        # Stages that spend on a request's behalf (a guard's classifier): admitted with it.
        self._reserving = tuple(s for s in self.stages if isinstance(s, Reserves))
        self._default_max = policy.accounting.default_max_tokens
        # A request can land on its model's deployments or any fallback's its tenant may use:
        # budgets reserve the dearest of them.
        self._reachable = {
            name: [(m, [d.id for d in policy.models[m].deployments])
                   for m in dict.fromkeys((name, *route.fallbacks, *route.context_fallbacks,
                                           *(route.spill.to if route.spill else ())))
                   if m in policy.models]
            for name, route in policy.models.items()
        }

    def estimate(self, call: Call, principal: Principal) -> Estimate:
        """Worst case for admission: estimated prompt + the completion cap, priced at the
        dearest deployment the request could land on."""
        body = call.body
        prompt = call.prompt_estimate if call.prompt_estimate is not None \
            else estimate_prompt_tokens(body)
        if call.endpoint in ("embeddings", "rerank", "score", "moderations"):  # nothing generated
            completion = 0
        else:
            cap = body.get("max_completion_tokens") or body.get("max_tokens")
            completion = cap if isinstance(cap, int) and cap > 0 else self._default_max
        ids = [d for m, ds in self._reachable.get(call.model, ()) if principal.may_use(m)
               for d in ds]
        cost = self.prices.worst_case(ids, prompt, completion, principal.tenant,
                                      datetime.now(UTC))
        extra = 0
        for s in self._reserving:
            spend = s.reserve(call, principal, prompt, completion)
            if spend is not None:
                extra += spend[0]
                cost += spend[1]
        return Estimate(prompt, completion, cost, extra)

    @staticmethod
    def clients_for(policy: Policy, previous: Mapping[str, tuple[ProviderBase, UpstreamClient]]
                    ) -> dict[str, tuple[ProviderBase, UpstreamClient]]:
        """Keep a provider's pool across reloads when its config did not change."""
        out: dict[str, tuple[ProviderBase, UpstreamClient]] = {}
        for name, cfg in policy.providers.items():
            prev = previous.get(name)
            if prev is not None and prev[0] == cfg:
                out[name] = prev
            else:
                out[name] = (cfg, UpstreamClient(cfg.max_connections, cfg.timeouts))
        return out


@dataclass(slots=True)
class Deps:
    runtime: Callable[[], Runtime]
    auth: Any
    limiter: Limiter | None
    settler: Any
    signals: Any
    metrics: Any
    codecs: dict[str, Any]
    request_log: RequestLog = field(default_factory=RequestLog)
    tracing: Tracing = field(default_factory=Tracing)
    # gateway.rollouts.RolloutController: measures settled requests of models in a rollout.
    rollouts: Any = None
    # Webhook alerts (gateway/alerts): `deps.alerts.emit(event_type, payload)`.
    alerts: Alerter = field(default_factory=Alerter)
