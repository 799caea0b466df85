"""The strategy a model routes with when its policy names none.

A pool of self-hosted engines (`vllm` and `local` providers) gets `prefix-load`: their prefix
caches make where a request lands matter, and on every workload family of the simulator it is
no worse than least-busy at p99 or round-robin at p50 (docs/routing.md, "Workload families").
Any other model keeps `weighted`, the documented default: an external provider's cache and
queue are not ours to see. A `strategy:` in the policy always wins.
"""

from __future__ import annotations

from gateway.policy.models import LocalProvider, ModelRoute, OpenAIProvider, Policy, Strategy

SELF_HOSTED_DEFAULT: Strategy = "prefix-load"


def self_hosted(policy: Policy, route: ModelRoute) -> bool:
    """Every deployment of the model is on a `vllm` or `local` provider."""
    for d in route.deployments:
        prov = policy.providers.get(d.provider)
        if not (isinstance(prov, LocalProvider)
                or (isinstance(prov, OpenAIProvider) and prov.kind == "vllm")):
            return False
    return True


def strategy_for(policy: Policy, route: ModelRoute) -> Strategy:
    """The policy's `strategy` when it names one, else the default for this kind of pool."""
    if "strategy" in route.model_fields_set or not self_hosted(policy, route):
        return route.strategy
    return SELF_HOSTED_DEFAULT
