"""Circuit breaker per deployment: consecutive failures → cooldown → one probe → closed.

State lives in this replica's memory: a breaker protects a backend from this replica's traffic,
and every replica learns the same failures from its own requests within a few attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.policy.models import CircuitBreaker


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0
    # When the current probe was let through (0: none). A probe that never reports back (its
    # request planned but not sent) expires after one cooldown, so a breaker cannot stick.
    probe_since: float = 0.0


class Health:
    def __init__(self, config: CircuitBreaker,
                 now: Callable[[], float] = time.monotonic) -> None:
        self._cfg = config
        self._states: dict[str, _State] = {}
        self._now = now

    def available(self, deployment_id: str) -> bool:
        """False while cooling down; after the cooldown one caller gets through as the probe."""
        st = self._states.get(deployment_id)
        if st is None or st.open_until == 0.0:
            return True
        now = self._now()
        if now < st.open_until or (st.probe_since and now - st.probe_since < self._cfg.cooldown_s):
            return False
        st.probe_since = now
        return True

    def cooling_for(self, deployment_id: str) -> float:
        st = self._states.get(deployment_id)
        if st is None:
            return 0.0
        return max(0.0, st.open_until - self._now())

    def success(self, deployment_id: str) -> None:
        st = self._states.get(deployment_id)
        if st is not None and (st.failures or st.open_until):
            st.failures = 0
            st.open_until = 0.0
            st.probe_since = 0.0

    def failure(self, deployment_id: str, retry_after: float | None = None) -> bool:
        """Count a retryable failure; returns True when it (re)opened the breaker."""
        st = self._states.setdefault(deployment_id, _State())
        st.failures += 1
        cfg = self._cfg
        # An upstream that says when to come back is believed at once (within the cap);
        # a failed probe re-opens immediately.
        if retry_after is not None or st.probe_since or st.failures >= cfg.failures:
            wait = cfg.cooldown_s
            if retry_after is not None:
                wait = min(max(retry_after, 0.0), cfg.max_cooldown_s)
                if st.failures >= cfg.failures:
                    wait = max(wait, cfg.cooldown_s)
            st.open_until = self._now() + wait
            st.probe_since = 0.0
            return True
        return False

    def release_probe(self, deployment_id: str) -> None:
        """A probe that ended without a verdict (client error, cancelled) frees the slot."""
        st = self._states.get(deployment_id)
        if st is not None:
            st.probe_since = 0.0

    def snapshot(self) -> dict[str, float]:
        """Deployment id → seconds of cooldown left, for /ready and metrics."""
        now = self._now()
        return {k: max(0.0, s.open_until - now) for k, s in self._states.items() if s.open_until}
