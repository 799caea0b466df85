"""Flow control as a request stage (gateway/stages/base.py): before routing, a request of a
flow-controlled model waits for a slot of its model's pool; the slot is given back when the
request's record closes, however the request ended.

The stage runs after the guards and the response cache (a blocked prompt or a cache hit never
waits for a GPU). `FlowControl` lives as long as the app and keeps the pools across reloads;
each policy's runtime gets a stage over the pools that policy controls. No `flow_control:` in
the policy: no stage, and the request path does none of this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.flow.metrics import FlowMetrics
from gateway.flow.pool import ClientGone, Pool
from gateway.routing.defaults import self_hosted
from gateway.stages.base import Answer, Stage, StageContext, StageRun

if TYPE_CHECKING:
    from gateway.policy.models import Policy
    from gateway.runtime import Runtime

# After the input guards (100) and the response cache (500): see gateway/stages/base.py.
ORDER_FLOW = 900


class FlowControl:
    """The flow-controlled pools of one gateway process, by public model name."""

    def __init__(self, metrics: FlowMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self.pools: dict[str, Pool] = {}

    def configure(self, policy: Policy, runtime: Runtime) -> dict[str, Pool]:
        """Apply `policy`; returns the pools it controls. A pool the policy no longer names
        lets its queue through and keeps counting the slots still held until they end."""
        cfg = policy.flow_control
        names: list[str] = []
        if cfg is not None:
            names = list(cfg.models) if cfg.models is not None else [
                m for m, r in policy.models.items() if self_hosted(policy, r)]
        active: dict[str, Pool] = {}
        for name in names:
            route = policy.models.get(name)
            if route is None:
                continue  # `policy check` reports it (checks.py)
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = Pool(name, self.metrics, self.clock)
            ids = [d.id for d in route.deployments if d.weight > 0] or [
                d.id for d in route.deployments]
            pool.configure(cfg, ids, runtime.signals.snapshot, runtime.health.cooling_for)
            active[name] = pool
        for name, pool in self.pools.items():
            if name not in active and pool.active:
                pool.configure(None, (), runtime.signals.snapshot, runtime.health.cooling_for)
        return active


class FlowStage:
    name = "flow_control"
    order = ORDER_FLOW

    def __init__(self, pools: dict[str, Pool], policy: Policy) -> None:
        self.pools = pools
        # Open mode (no tenants): every caller is `default`, priority 0, weight 1.
        self.classes = {name: (t.priority, t.weight) for name, t in policy.tenants.items()}

    def begin(self, ctx: StageContext) -> StageRun | None:
        pool = self.pools.get(ctx.call.model)
        if pool is None:
            return None
        priority, weight = self.classes.get(ctx.principal.tenant, (0, 1.0))
        return _FlowRun(pool, ctx, priority, weight)


class _FlowRun(StageRun):
    __slots__ = ("ctx", "pool", "priority", "weight")

    def __init__(self, pool: Pool, ctx: StageContext, priority: int, weight: float) -> None:
        self.pool = pool
        self.ctx = ctx
        self.priority = priority
        self.weight = weight

    async def before(self) -> Answer | None:
        ctx = self.ctx
        pool = self.pool
        started = pool.clock()
        cost = pool.cost(ctx.principal.tenant, ctx.call.body)
        try:
            await pool.acquire(ctx.principal.tenant, self.priority, self.weight,
                               ctx.call.receive, cost)
        except ClientGone:
            ctx.record.client_disconnected = True
            raise
        record = ctx.record
        previous = record.on_close
        tenant = ctx.principal.tenant
        only = pool.confine(tenant)
        if only is not None:
            ctx.call.deployments = only

        def release() -> None:
            if previous is not None:  # another holder came first: both run
                previous()
            pool.release(tenant, cost)
        record.on_close = release
        waited = pool.clock() - started
        if waited > 0.0005:
            # How long the request queued: clients and load tests can tell queueing from a
            # slow model.
            ctx.response_headers["x-gateway-queue-ms"] = f"{waited * 1000:.0f}"
        return None


def build_flow_stages(policy: Policy, runtime: Runtime) -> list[Stage]:
    flow = getattr(runtime, "flow", None)
    if flow is None:
        return []
    pools = flow.configure(policy, runtime)
    return [FlowStage(pools, policy)] if pools else []
