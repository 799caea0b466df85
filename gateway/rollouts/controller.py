"""The rollout controller: one per app, beside the router. It owns every model's rollout,
flushes their measurements to the store, evaluates the gates and moves the state.

Nothing here runs on the request path: the router reads `ModelRollout.percent` (a float
refreshed here), settlement calls `observe` (a few additions to in-memory counts), and a
background task every `interval_s` flushes, reads what every replica added, and decides.
A replica that starts (or restarts) reads the shared state first and resumes from it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.accounting.records import RequestRecord
from gateway.policy.models import Policy
from gateway.rollouts.events import RolloutEvents
from gateway.rollouts.gates import GateResult, all_hold, evaluate, first_breach
from gateway.rollouts.rollout import ModelRollout
from gateway.rollouts.store import MemoryStore, RolloutState, RolloutStore

log = logging.getLogger("gateway.rollouts")


class UnknownRollout(LookupError):
    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(model)
        self.model = model
        self.known = known


class RolloutController:
    def __init__(self, store: RolloutStore, events: RolloutEvents | None = None,
                 interval_s: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.events = events or RolloutEvents()
        self.interval_s = interval_s
        self.clock = clock
        self.rollouts: dict[str, ModelRollout] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # gateway.rollouts.shadow.ShadowTraffic, set by the app once the proxy exists.
        self.shadow: Any = None
        self._draw = random.Random().random

    @classmethod
    def from_policy(cls, policy: Policy, registry: Any = None, tracing: Any = None,
                    alerts: Any = None) -> RolloutController:
        if policy.state.redis_url:
            from gateway.rollouts.store import RedisStore

            store: RolloutStore = RedisStore(policy.state.redis_url, policy.state.key_prefix)
        else:
            store = MemoryStore()
        c = cls(store, RolloutEvents(registry, tracing, alerts))
        c.set_policy(policy)
        return c

    def set_policy(self, policy: Policy) -> None:
        """The rollouts of a (re)loaded policy; one whose id is unchanged keeps its object
        (cached state and pending counts)."""
        new: dict[str, ModelRollout] = {}
        for name, route in policy.models.items():
            if route.rollout is None:
                continue
            ro = ModelRollout(name, route, policy)
            old = self.rollouts.get(name)
            if old is not None and old.id == ro.id and old.cfg == ro.cfg:
                ro = old
            new[name] = ro
        self.rollouts = new

    def get(self, model: str) -> ModelRollout | None:
        return self.rollouts.get(model)

    def observe(self, record: RequestRecord) -> None:
        arm = record.rollout_arm
        if arm is None:
            return
        ro = self.rollouts.get(record.model)
        if ro is not None:
            ro.observe(record, arm)  # type: ignore[arg-type]
            if arm == "baseline" and self.shadow is not None and ro.cfg.shadow is not None \
                    and ro.active:
                self.shadow.maybe_copy(ro, record, 100.0 * self._draw())

    # ---- background loop ---------------------------------------------------------------------

    async def start(self, timeout_s: float = 5.0) -> None:
        """Read the shared state before serving (a restarted replica resumes where the
        rollout stands), then tick in the background. Until a rollout's state is read, its
        candidate gets nothing."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.tick()
        except Exception:
            log.warning("rollout state unreadable at start; the baseline serves every "
                        "rollout's traffic until it is", exc_info=True)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self.shadow is not None:
            await self.shadow.drain()
        try:
            await self.tick()  # the last counts of this replica still count
        except Exception:
            log.warning("final rollout flush failed", exc_info=True)
        await self.store.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis down: routing keeps the last split it knew; counts wait in memory
                # (those of a step that ends meanwhile are dropped, as stale evidence).
                log.warning("rollout tick failed; retrying", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def tick(self) -> None:
        async with self._lock:
            for ro in list(self.rollouts.values()):
                await self._tick_one(ro)

    async def _tick_one(self, ro: ModelRollout) -> None:
        state = await self.store.load(ro.id)
        if state is None:
            fresh = RolloutState(step_started=self.clock(), updated=self.clock(),
                                 reason="started")
            if await self.store.swap(ro.id, 0, fresh):
                ro.apply(fresh)
                self._announce(ro, "started", {"step": 0,
                                               "percent": ro.cfg.steps[0].percent})
            state = await self.store.load(ro.id)
            if state is None:
                return
        ro.apply(state)
        pending = ro.take_pending()
        if pending.step == state.step and ro.active:
            unsent = dict(pending.arms)
            try:
                for arm, stats in pending.arms.items():
                    fields = stats.to_fields()
                    if fields:
                        await self.store.add(ro.id, state.step, arm, fields)
                    del unsent[arm]
            finally:
                # Kept for the next flush (same step): a Redis outage loses no counts.
                if ro.pending.step == pending.step:
                    for arm, stats in unsent.items():
                        ro.pending.arms[arm].add(stats)
        self.events.set_percent(ro.model, ro.id, ro.percent)
        if ro.active:
            await self._decide(ro, state)

    async def _decide(self, ro: ModelRollout, state: RolloutState) -> None:
        stats = await self.store.read(ro.id, state.step)
        cand, base = stats["candidate"], stats["baseline"]
        results = evaluate(ro.cfg, cand, base)
        breach = first_breach(results)
        if breach is not None:
            await self._roll_back(ro, state, breach, results)
            return
        if state.status != "running":
            return
        step = ro.cfg.steps[state.step]
        now = self.clock()
        if now - state.step_started < step.min_duration_s or cand.served < step.min_requests \
                or not all_hold(results):
            return
        last = state.step + 1 >= len(ro.cfg.steps)
        new = RolloutState(status="promoted" if last else "running",
                           step=state.step if last else state.step + 1,
                           step_started=now, updated=now,
                           reason="every gate held" + (" on the last step" if last else ""),
                           gates=[r.to_json() for r in results])
        if await self.store.swap(ro.id, state.version, new):
            ro.apply(new)
            detail = {"step": new.step, "reason": new.reason, "gates": new.gates,
                      "candidate_served": cand.served, "baseline_served": base.served}
            if last:
                self._announce(ro, "promoted", {**detail, "percent": 100.0})
            else:
                self._announce(ro, "step", {**detail,
                                            "percent": ro.cfg.steps[new.step].percent})

    async def _roll_back(self, ro: ModelRollout, state: RolloutState, breach: GateResult,
                         results: list[GateResult]) -> None:
        new = RolloutState(status="rolled_back", step=state.step,
                           step_started=state.step_started, updated=self.clock(),
                           reason=f"gate breached: {breach.describe()}",
                           gates=[r.to_json() for r in results])
        if await self.store.swap(ro.id, state.version, new):
            ro.apply(new)
            self._announce(ro, "rolled_back", {"step": state.step, "reason": new.reason,
                                               "gate": breach.to_json(), "percent": 0.0})

    def _announce(self, ro: ModelRollout, kind: str, detail: dict[str, Any]) -> None:
        self.events.set_percent(ro.model, ro.id, ro.percent)
        self.events.transition(ro.model, ro.id, kind, detail)

    # ---- control (CLI, admin API) ------------------------------------------------------------

    def _find(self, model: str) -> ModelRollout:
        ro = self.rollouts.get(model)
        if ro is None:
            raise UnknownRollout(model, sorted(self.rollouts))
        return ro

    async def status(self, model: str) -> dict[str, Any]:
        ro = self._find(model)
        await self.tick()
        state = ro.state
        stats = await self.store.read(ro.id, state.step)
        results = evaluate(ro.cfg, stats["candidate"], stats["baseline"])
        step = ro.cfg.steps[min(state.step, len(ro.cfg.steps) - 1)]
        return {
            "model": ro.model, "rollout": ro.id, "status": state.status, "step": state.step,
            "steps": len(ro.cfg.steps), "percent": ro.percent,
            "step_started": state.step_started,
            "step_elapsed_s": max(0.0, self.clock() - state.step_started),
            "step_min_duration_s": step.min_duration_s, "step_min_requests": step.min_requests,
            "reason": state.reason, "version": state.version,
            "candidate": {"deployments": sorted(ro.candidate_ids),
                          "served": stats["candidate"].served,
                          "requests": stats["candidate"].requests},
            "baseline": {"deployments": sorted(t.id for t in ro.targets["baseline"]),
                         "served": stats["baseline"].served,
                         "requests": stats["baseline"].requests},
            "gates": [r.to_json() for r in results],
            "last_transition_gates": state.gates,
        }

    async def control(self, model: str, action: str) -> dict[str, Any]:
        """pause | resume | promote | abort. Refused (ValueError) when the state does not
        allow it (resuming a rolled-back rollout…)."""
        ro = self._find(model)
        async with self._lock:
            for _ in range(20):  # another replica may move the state between read and swap
                state = await self.store.load(ro.id) or RolloutState(step_started=self.clock())
                new = _controlled(state, action, self.clock())
                if new is None:
                    raise ValueError(f"cannot {action} rollout {ro.id!r} of {model!r}: it is "
                                     f"{state.status.replace('_', ' ')}")
                if await self.store.swap(ro.id, state.version, new):
                    ro.apply(new)
                    kind = {"pause": "paused", "resume": "resumed", "promote": "promoted",
                            "abort": "rolled_back"}[action]
                    self._announce(ro, kind, {"step": new.step, "reason": new.reason,
                                              "percent": ro.percent})
                    break
            else:
                raise RuntimeError("the rollout state kept changing; retry")
        return await self.status(model)


def _controlled(s: RolloutState, action: str, now: float) -> RolloutState | None:
    active = s.status in ("running", "paused")
    if action == "pause" and s.status == "running":
        return RolloutState("paused", s.step, s.step_started, updated=now,
                            reason="paused by an operator")
    if action == "resume" and s.status == "paused":
        # The pause does not count towards the step's duration: it restarts.
        return RolloutState("running", s.step, now, updated=now, reason="resumed by an operator")
    if action == "promote" and active:
        return RolloutState("promoted", s.step, now, updated=now,
                            reason="promoted by an operator")
    if action == "abort" and active:
        return RolloutState("rolled_back", s.step, s.step_started, updated=now,
                            reason="aborted by an operator")
    return None
