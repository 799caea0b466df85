"""Circuit breaker: trip after N failures, skip while cooling, one probe, close on success."""

from __future__ import annotations

from gateway.policy.models import CircuitBreaker
from gateway.routing.health import Health


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_trips_after_consecutive_failures_then_probes() -> None:
    clock = Clock()
    h = Health(CircuitBreaker(failures=3, cooldown_s=10), now=clock)
    assert not h.failure("a") and not h.failure("a")
    assert h.available("a")
    assert h.failure("a")
    assert not h.available("a") and h.cooling_for("a") == 10
    clock.t += 10.5
    assert h.available("a")  # the probe
    assert not h.available("a")  # only one at a time
    h.success("a")
    assert h.available("a") and h.available("a")


def test_failed_probe_reopens_at_once() -> None:
    clock = Clock()
    h = Health(CircuitBreaker(failures=2, cooldown_s=5), now=clock)
    h.failure("a")
    h.failure("a")
    clock.t += 6
    assert h.available("a")
    assert h.failure("a")
    assert not h.available("a")


def test_retry_after_opens_immediately_within_cap() -> None:
    clock = Clock()
    h = Health(CircuitBreaker(failures=5, cooldown_s=5, max_cooldown_s=60), now=clock)
    assert h.failure("a", retry_after=2)
    assert h.cooling_for("a") == 2
    h.failure("b", retry_after=1000)
    assert h.cooling_for("b") == 60


def test_unreported_probe_expires() -> None:
    clock = Clock()
    h = Health(CircuitBreaker(failures=1, cooldown_s=5), now=clock)
    h.failure("a")
    clock.t += 6
    assert h.available("a")  # probe handed out, never reported back
    clock.t += 6
    assert h.available("a")
