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


def test_one_tenants_failures_do_not_open_it() -> None:
    """Input that makes a backend fail, sent by one tenant, keeps the deployment for all."""
    h = Health(CircuitBreaker(failures=3, cooldown_s=10), now=Clock(), tenants=5)
    for _ in range(50):
        assert not h.failure("a", caller="mallory")
    assert h.available("a")


def test_failures_from_two_tenants_open_it() -> None:
    h = Health(CircuitBreaker(failures=3, cooldown_s=10), now=Clock(), tenants=5)
    assert not h.failure("a", caller="acme") and not h.failure("a", caller="acme")
    assert h.failure("a", caller="globex")
    assert not h.available("a")


def test_a_success_between_resets_the_callers() -> None:
    h = Health(CircuitBreaker(failures=2, cooldown_s=10, min_requests=1000), now=Clock(),
               tenants=5)
    h.failure("a", caller="acme")
    h.success("a")
    assert not h.failure("a", caller="globex")  # a new run, one caller so far
    assert h.failure("a", caller="acme")


def test_backend_failures_need_no_second_tenant() -> None:
    h = Health(CircuitBreaker(failures=3, cooldown_s=10), now=Clock(), tenants=5)
    h.failure("a", caller="acme")
    h.failure("a", caller="acme")
    assert h.failure("a", caller="acme", caused_by_backend=True)  # e.g. connection refused


def test_open_mode_has_one_tenant_so_one_is_enough() -> None:
    h = Health(CircuitBreaker(failures=2, cooldown_s=10), now=Clock(), tenants=0)
    h.failure("a", caller="default")
    assert h.failure("a", caller="default")


def test_failure_ratio_over_the_window_opens_it() -> None:
    """Every other request failing never makes three in a row; the ratio rule catches it."""
    clock = Clock()
    h = Health(CircuitBreaker(failures=3, cooldown_s=10, window_s=30, min_requests=10,
                              failure_ratio=0.5), now=clock, tenants=3)
    opened = False
    for i in range(20):
        clock.t += 0.5
        if i % 2:
            h.success("a")
        else:
            opened = h.failure("a", caller=("acme", "globex")[i % 4 // 2])
        if opened:
            break
    assert opened and not h.available("a")


def test_failure_ratio_forgets_old_failures() -> None:
    clock = Clock()
    h = Health(CircuitBreaker(failures=100, cooldown_s=10, window_s=10, min_requests=4,
                              failure_ratio=0.5), now=clock, tenants=3)
    h.failure("a", caller="acme")
    h.failure("a", caller="globex")
    clock.t += 30  # the window moved on
    for _ in range(4):
        h.success("a")
    assert not h.failure("a", caller="acme")  # 1 failure in 5 within the window
