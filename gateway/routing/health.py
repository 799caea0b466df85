"""Circuit breaker per deployment: failures → cooldown → one probe → closed.

Two rules open it (docs/routing.md, "Circuit breaker"), each robust to a single caller:
- consecutive: `failures` retryable failures in a row;
- ratio: over the last `window_s`, at least `min_requests` attempts and a `failure_ratio`
  share of them failed (intermittent failures never make N in a row).
A failure the request itself may have caused (an upstream 5xx, a timeout) only counts towards
opening once failures come from `min_tenants` distinct tenants: one tenant sending input that
makes a backend answer 500 must not take the deployment away from everyone, as Envoy's
outlier detection will not eject on one host's view. A failure no request can cause
(connection refused, `Retry-After`, our key refused) vouches for itself.

State lives in this replica's memory: a breaker protects a backend from this replica's traffic,
and every replica learns the same failures from its own requests within a few attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.policy.models import CircuitBreaker

_BUCKETS = 10
# The pseudo-caller of failures no request can cause: it satisfies the caller rule alone.
_BACKEND = "\x00backend"

log = logging.getLogger("gateway.routing")

# Told (deployment id, cooldown seconds) when a closed breaker opens (alerts' circuit_open).
OpenListener = Callable[[str, float], None]


@dataclass(slots=True)
class _Bucket:
    epoch: int = -1
    ok: int = 0
    failed: int = 0
    callers: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _State:
    failures: int = 0
    # Who failed during the current run of consecutive failures.
    callers: set[str] = field(default_factory=set)
    open_until: float = 0.0
    # When the current probe was let through (0: none). A probe that never reports back (its
    # request planned but not sent) expires after one cooldown, so a breaker cannot stick.
    probe_since: float = 0.0
    window: list[_Bucket] = field(default_factory=lambda: [_Bucket() for _ in range(_BUCKETS)])


class Health:
    def __init__(self, config: CircuitBreaker,
                 now: Callable[[], float] = time.monotonic, tenants: int = 0) -> None:
        self._states: dict[str, _State] = {}
        self._now = now
        self._listeners: list[OpenListener] = []
        self.configure(config, tenants)

    def configure(self, config: CircuitBreaker, tenants: int) -> None:
        """A (re)loaded policy's settings; `tenants` is how many the policy declares."""
        self._cfg = config
        self._need = max(1, min(config.min_tenants, tenants))
        self._bucket_s = config.window_s / _BUCKETS

    def on_open(self, listener: OpenListener) -> None:
        """Call `listener` when a deployment's breaker goes from closed to open (not when a
        failed probe re-opens it: that is the same outage)."""
        self._listeners.append(listener)

    def any_open(self) -> bool:
        """Whether any breaker is open or probing (else every deployment is `available`,
        with no probe to hand out); a deployment that never failed has no state at all."""
        return any(st.open_until for st in self._states.values())

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
        if st is None:
            return  # never failed: nothing to count (the ratio is 0)
        self._bucket(st).ok += 1
        if st.failures or st.open_until:
            st.failures = 0
            st.callers.clear()
            st.open_until = 0.0
            st.probe_since = 0.0

    def failure(self, deployment_id: str, retry_after: float | None = None, *,
                caller: str | None = None, caused_by_backend: bool = False) -> bool:
        """Count a retryable failure of a request from tenant `caller`; returns True when it
        (re)opened the breaker."""
        st = self._states.setdefault(deployment_id, _State())
        source = _BACKEND if caused_by_backend or caller is None else caller
        st.failures += 1
        st.callers.add(source)
        bucket = self._bucket(st)
        bucket.failed += 1
        bucket.callers.add(source)
        cfg = self._cfg
        # An upstream that says when to come back is believed at once (within the cap);
        # a failed probe re-opens immediately.
        if retry_after is not None or st.probe_since:
            return self._open(deployment_id, st, retry_after)
        if st.failures >= cfg.failures and self._enough(st.callers):
            return self._open(deployment_id, st, None)
        if self._ratio_exceeded(st):
            return self._open(deployment_id, st, None)
        return False

    def _open(self, deployment_id: str, st: _State, retry_after: float | None) -> bool:
        was_closed = st.open_until == 0.0
        cfg = self._cfg
        wait = cfg.cooldown_s
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), cfg.max_cooldown_s)
            if st.failures >= cfg.failures:
                wait = max(wait, cfg.cooldown_s)
        st.open_until = self._now() + wait
        st.probe_since = 0.0
        # What opened it is spent: after the cooldown, a probe and fresh evidence decide.
        for b in st.window:
            b.epoch = -1
        if was_closed:
            for listener in self._listeners:
                try:
                    listener(deployment_id, wait)
                except Exception:  # an observer must never fail the request that failed
                    log.exception("circuit-open listener failed")
        return True

    def _enough(self, callers: set[str]) -> bool:
        return _BACKEND in callers or len(callers) >= self._need

    def _bucket(self, st: _State) -> _Bucket:
        epoch = int(self._now() / self._bucket_s)
        b = st.window[epoch % _BUCKETS]
        if b.epoch != epoch:
            b.epoch, b.ok, b.failed = epoch, 0, 0
            b.callers.clear()
        return b

    def _ratio_exceeded(self, st: _State) -> bool:
        oldest = int(self._now() / self._bucket_s) - _BUCKETS
        ok = failed = 0
        callers: set[str] = set()
        for b in st.window:
            if b.epoch > oldest:
                ok += b.ok
                failed += b.failed
                callers |= b.callers
        total = ok + failed
        return (total >= self._cfg.min_requests and failed >= self._cfg.failure_ratio * total
                and self._enough(callers))

    def release_probe(self, deployment_id: str) -> None:
        """A probe that ended without a verdict (client error, cancelled) frees the slot."""
        st = self._states.get(deployment_id)
        if st is not None:
            st.probe_since = 0.0

    def snapshot(self) -> dict[str, float]:
        """Deployment id → seconds of cooldown left, for /ready and metrics."""
        now = self._now()
        return {k: max(0.0, s.open_until - now) for k, s in self._states.items() if s.open_until}
