"""One model's rollout: which arm a request takes (the hot path), and what its requests
measured (buffered until the controller flushes them).

The arm is a pure function of the cached state and the request: `hash(sticky key, rollout
id)` → u in [0, 1), the candidate when 100·u < the step's percent. Steps only grow, so a
session on the candidate stays there for the whole rollout, and a baseline session moves at
most once, when a step takes it in. Requests with no sticky key draw u at random.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from gateway.accounting.records import RequestRecord
from gateway.call import Call
from gateway.policy.models import ModelRoute, Policy
from gateway.policy.rollouts import Rollout as RolloutPolicy
from gateway.providers.base import Target
from gateway.rollouts.stats import ArmStats
from gateway.rollouts.store import Arm, RolloutState

_OK_STATUSES = (200,)
_SCALE = 100.0 / 2**64


def rollout_id(model: str, cfg: RolloutPolicy) -> str:
    """The policy's `id`, or a hash of what defines the rollout: a changed candidate or step
    list is a new rollout with fresh state."""
    if cfg.id:
        return cfg.id
    text = json.dumps([model, cfg.candidate.model_dump(), [s.model_dump() for s in cfg.steps]],
                      sort_keys=True)
    return f"{model}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass(slots=True)
class Pending:
    """Measurements not yet flushed, for one step."""

    step: int
    arms: dict[Arm, ArmStats]


class ModelRollout:
    def __init__(self, model: str, route: ModelRoute, policy: Policy,
                 rng: random.Random | None = None) -> None:
        assert route.rollout is not None
        cfg = self.cfg = route.rollout
        self.model = model
        self.id = rollout_id(model, cfg)
        self._salt = self.id.encode()
        self._rand = (rng or random.Random()).random
        if cfg.candidate.model is not None:
            other = policy.models[cfg.candidate.model]
            cand = [Target(model, d, d.provider) for d in other.deployments]
            base = [Target(model, d, d.provider) for d in route.deployments]
        else:
            names = set(cfg.candidate.deployments)
            cand = [Target(model, d, d.provider) for d in route.deployments if d.id in names]
            base = [Target(model, d, d.provider) for d in route.deployments if d.id not in names]
        self.targets: dict[Arm, tuple[Target, ...]] = {"candidate": tuple(cand),
                                                       "baseline": tuple(base)}
        self.candidate_ids = frozenset(t.id for t in cand)
        self._sticky_header = None if cfg.sticky == "user" else cfg.sticky.lower()
        self.state = RolloutState()
        self.loaded = False
        # Until the shared state is read the candidate gets nothing: it may be rolled back.
        self.percent = 0.0
        self.pending = Pending(0, {"baseline": ArmStats(), "candidate": ArmStats()})
        # Shadow copies in flight (request ids): they take the candidate arm whatever the split.
        self.shadow_ids: set[str] = set()

    # ---- state -------------------------------------------------------------------------------

    def apply(self, state: RolloutState) -> None:
        """Adopt the shared state (after a read or a transition)."""
        self.state = state
        self.loaded = True
        if self.pending.step != state.step:
            # Counts of a step that has ended are not this step's evidence: start afresh.
            self.pending = Pending(state.step, {"baseline": ArmStats(), "candidate": ArmStats()})
        if state.status == "promoted":
            self.percent = 100.0
        elif state.status == "rolled_back":
            self.percent = 0.0
        else:
            steps = self.cfg.steps
            self.percent = steps[min(state.step, len(steps) - 1)].percent

    @property
    def active(self) -> bool:
        return self.state.status in ("running", "paused")

    # ---- the hot path ------------------------------------------------------------------------

    def arm(self, call: Call) -> Arm:
        pct = self.percent
        if pct <= 0.0:
            return "baseline"
        if pct >= 100.0 or call.request_id in self.shadow_ids:
            return "candidate"
        key = call.session if self._sticky_header is None \
            else call.headers.get(self._sticky_header)
        if key:
            digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._salt[:64]).digest()
            u = int.from_bytes(digest, "big") * _SCALE
        else:
            u = self._rand() * 100.0
        return "candidate" if u < pct else "baseline"

    # ---- measurements (off the request path: called from settlement) -----------------------

    def observe(self, record: RequestRecord, arm: Arm) -> None:
        """Add one settled request to the pending counts of the step it ran in."""
        shadow = record.request_id in self.shadow_ids
        if shadow:
            self.shadow_ids.discard(record.request_id)
        if not self.active:
            return
        measure(self.pending.arms[arm], record, self.candidate_ids if arm == "candidate" else None,
                shadow)

    def take_pending(self) -> Pending:
        p = self.pending
        self.pending = Pending(self.state.step, {"baseline": ArmStats(), "candidate": ArmStats()})
        return p


def measure(s: ArmStats, record: RequestRecord, ids: frozenset[str] | None,
            shadow: bool) -> None:
    """Add one settled request to an arm's counts. ``ids``: the candidate's deployment ids
    (a candidate request served elsewhere — every candidate deployment down — is a candidate
    failure), None for the baseline."""
    s.requests += 1
    if not shadow:
        s.served += 1
    attempts = record.attempts
    on_arm = bool(attempts) and (ids is None or attempts[0].deployment in ids)
    # A stream that broke after its first byte keeps status 200: its attempt says it failed.
    failed = record.status >= 500 or record.status == 429 or not on_arm or any(
        a.outcome == "failed_midstream" or (a.outcome == "error" and (
            a.status is None or a.status >= 500 or a.status == 429)) for a in attempts)
    if failed:
        s.errors += 1
        return
    if record.status not in _OK_STATUSES:
        return  # a client error (400…): says nothing about the arm
    s.replies += 1
    if record.finish_length:
        s.length_cut += 1
    latency = record.latency_ms / 1000
    s.latency.add(latency)
    cost = float(record.cost_usd)
    s.cost_sum += cost
    s.cost_sq += cost * cost
    if record.stream and record.ttft_ms is not None:
        ttft = record.ttft_ms / 1000
        s.ttft.add(ttft)
        served = attempts[-1]
        out = served.usage.completion_tokens if served.usage is not None else \
            served.streamed_chunks
        if out > 1:
            s.tpot.add(max(latency - ttft, 0.0) / (out - 1))
