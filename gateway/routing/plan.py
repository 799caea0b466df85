"""The route plan: which deployments one request may try, in order. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.call import Call
from gateway.errors import ServiceUnavailable
from gateway.policy.models import ModelRoute, Policy
from gateway.providers.base import Target
from gateway.routing.affinity import keyed, session_headers
from gateway.routing.base import NO_SIGNALS, Signals, Strategy
from gateway.routing.defaults import SELF_HOSTED_DEFAULT, strategy_for
from gateway.routing.health import Health
from gateway.routing.registry import make_strategy
from gateway.routing.spill import Spill, self_hosted_ids


@dataclass(frozen=True, slots=True)
class RoutePlan:
    attempts: tuple[Target, ...]
    """Primary model's deployments (strategy order), then each fallback model's."""
    context_fallbacks: tuple[str, ...]
    """Models to switch to when a deployment says the prompt is too long."""
    max_attempts: int
    skipped: tuple[str, ...] = ()
    """Fallback models left out because the caller may not use them (named in the 502)."""
    arm: str | None = None
    """The rollout arm (`baseline`/`candidate`) the primary model's targets came from; None
    when the model has no rollout (gateway/rollouts)."""
    reason: str | None = None
    """Why a model with a `spill:` rule was ordered as it was, when its self-hosted side was
    predicted over the TTFT threshold (`spill: …`/`held: …`, gateway/routing/spill.py);
    stored in the ledger record."""


class Router:
    """Built once per policy; the per-model strategies keep their own state (cursors, rings)."""

    def __init__(self, policy: Policy, health: Health,
                 signals: Callable[[], Signals] | None = None,
                 unhealthy: Callable[[], frozenset[str]] | None = None,
                 rollouts: Any = None) -> None:
        self._policy = policy
        # gateway.rollouts.RolloutController (or None): asked for a model's arm before the
        # strategy orders its targets.
        self._controller = rollouts
        self._health = health
        self._signals = signals or (lambda: NO_SIGNALS)
        self._unhealthy = unhealthy or frozenset
        self._targets: dict[str, tuple[Target, ...]] = {
            name: tuple(Target(name, d, d.provider) for d in route.deployments)
            for name, route in policy.models.items()
        }
        self._unique = {name for name, targets in self._targets.items()
                        if len({t.id for t in targets}) == len(targets)}
        self._routable = {name: tuple(t for t in targets if t.deployment.weight > 0)
                          for name, targets in self._targets.items()}
        self._strategies: dict[str, Strategy] = {
            name: keyed(make_strategy(strategy_for(policy, route), policy.router.seed),
                        route.session_key)
            for name, route in policy.models.items()
        }
        # Models with a `spill:` rule: their self-hosted side is ordered by the model's
        # strategy (the self-hosted default when it names none), the external side by price.
        self._spills: dict[str, Spill] = {
            name: Spill(route.spill, self_hosted_ids(policy, route.deployments),
                        keyed(make_strategy(route.strategy if "strategy" in route.model_fields_set
                                            else SELF_HOSTED_DEFAULT, policy.router.seed),
                              route.session_key), policy.router.seed)
            for name, route in policy.models.items() if route.spill is not None
        }
        # Request headers the ingress keeps for routing (models' `session_key` headers).
        self.session_headers = session_headers(policy)

    def route(self, model: str) -> ModelRoute:
        return self._policy.models[model]

    def rollout(self, model: str) -> Any:
        """The model's rollout (gateway.rollouts.ModelRollout), or None."""
        return self._controller.rollouts.get(model) if self._controller is not None else None

    def candidates(self, model: str, unhealthy: frozenset[str]) -> Sequence[Target]:
        """The model's deployments that may serve now. While nothing is unhealthy or cooling
        down this is the same tuple every time, which strategies cache their per-list work
        by (`prefix-load`), and no deployment's `id` property chain is read."""
        if not unhealthy and not self._health.any_open():
            return self._routable.get(model, ())
        return [t for t in self._targets.get(model, ())
                if t.deployment.weight > 0 and t.id not in unhealthy
                and self._health.available(t.id)]

    def order(self, model: str, call: Call, signals: Signals,
              unhealthy: frozenset[str]) -> Sequence[Target]:
        cands = self.candidates(model, unhealthy)
        only = call.deployments if model == call.model else None
        if only is not None:
            # Confined by flow control (gateway/flow/confine.py): ordered among those
            # deployments, the others follow in policy order as fallbacks only. When all of
            # them went down since flow control chose, the call is not confined.
            inside = [t for t in cands if t.id in only]
            if inside:
                return [*self._ordered(model, inside, call, signals),
                        *(t for t in cands if t.id not in only)]
        return self._ordered(model, cands, call, signals)

    def _ordered(self, model: str, cands: Sequence[Target], call: Call,
                 signals: Signals) -> Sequence[Target]:
        return cands if len(cands) <= 1 else self._strategies[model].order(cands, signals, call)

    def plan(self, call: Call, models: Sequence[str] | None = None, *,
             allowed: frozenset[str] | None = None, require: bool = True) -> RoutePlan:
        """Plan for the call's model and its fallbacks (or for ``models``, e.g. the context
        fallbacks). Models outside ``allowed`` (the caller's tenant's list; None: all) are
        never planned — a tenant's request must not reach a model it may not use, fallbacks
        included. Raises ServiceUnavailable when every deployment is cooling down, unless
        ``require`` is false (an empty plan is then returned)."""
        route = self._policy.models[call.model]
        names = list(models) if models is not None else [call.model, *route.fallbacks]
        skipped = tuple(n for n in names if allowed is not None and n not in allowed)
        if skipped:
            names = [n for n in names if n not in skipped]
        signals = self._signals()
        unhealthy = self._unhealthy()
        attempts: list[Target] = []
        seen: set[tuple[str, str]] = set()
        arm: str | None = None
        reason: str | None = None
        rollout = self.rollout(call.model)
        # (model, id) pairs repeat only when a model is named twice or lists a deployment
        # twice; otherwise its order is appended as it is, without reading 16 `id` chains.
        distinct = len(set(names)) == len(names)
        ordered: Sequence[Target]
        for name in names:
            if rollout is not None and name == call.model:
                arm = rollout.arm(call)
                ordered = self._order_arm(name, rollout, arm, call, signals, unhealthy)
            elif name in self._spills:
                ordered, why = self._spill(name, call, signals, unhealthy, allowed)
                reason = reason or why
            else:
                ordered = self.order(name, call, signals, unhealthy)
                if distinct and name in self._unique:  # nothing to de-duplicate
                    attempts.extend(ordered)
                    continue
            for t in ordered:
                if (name, t.id) not in seen:
                    seen.add((name, t.id))
                    attempts.append(t)
        max_attempts = route.max_attempts or self._policy.router.max_attempts
        if not attempts and require:
            raise self._all_down(names, skipped)
        return RoutePlan(tuple(attempts), tuple(route.context_fallbacks), max_attempts, skipped,
                         arm, reason)

    def _spill(self, model: str, call: Call, signals: Signals, unhealthy: frozenset[str],
               allowed: frozenset[str] | None) -> tuple[list[Target], str | None]:
        """The model's targets and its `spill.to` models' (those the tenant may use) in
        spill order, with the reason when the threshold decided it."""
        spill = self._spills[model]
        to = [m for m in spill.rule.to if m in self._targets]
        excluded = [m for m in to if allowed is not None and m not in allowed]
        extra = [t for m in to if m not in excluded for t in self.candidates(m, unhealthy)]
        return spill.order(self.candidates(model, unhealthy), extra, signals, call, excluded)

    def _order_arm(self, model: str, rollout: Any, arm: str, call: Call, signals: Signals,
                   unhealthy: frozenset[str]) -> list[Target]:
        """The arm's live targets in strategy order; the baseline's when none of the
        candidate's is live (the request is served, and counts as a candidate failure)."""
        for side in (arm, "baseline") if arm == "candidate" else (arm,):
            cands = [t for t in rollout.targets[side]
                     if t.deployment.weight > 0 and t.id not in unhealthy
                     and self._health.available(t.id)]
            if len(cands) > 1:
                return self._strategies[model].order(cands, signals, call)
            if cands:
                return cands
        return []

    def _all_down(self, names: Sequence[str], skipped: Sequence[str] = ()) -> ServiceUnavailable:
        ids = [t.id for n in names for t in self._targets.get(n, ()) if t.deployment.weight > 0]
        waits = [self._health.cooling_for(i) for i in ids]
        wait = max(1, int(min((w for w in waits if w > 0), default=1) + 0.999))
        return ServiceUnavailable(
            f"Every deployment of {', '.join(repr(n) for n in names)} is unavailable "
            f"(cooling down after failures or failing health checks: {', '.join(ids)}). "
            + (f"Fallback {', '.join(repr(n) for n in skipped)} was skipped: this key's "
               "tenant may not use it. " if skipped else "")
            + f"Retry after {wait} s.",
            headers={"Retry-After": str(wait)},
        )
