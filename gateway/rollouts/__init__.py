"""SLO-gated canary rollouts (docs/rollouts.md): the policy's `rollout:` on a model, carried
out beside the router — the split per step, gates on live measurements, promotion, rollback."""

from gateway.rollouts.controller import RolloutController, UnknownRollout
from gateway.rollouts.rollout import ModelRollout

__all__ = ["ModelRollout", "RolloutController", "UnknownRollout"]
