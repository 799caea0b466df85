"""The breaker tells its listeners when a deployment's circuit opens (alerts' circuit_open)."""

from __future__ import annotations

from gateway.policy.models import CircuitBreaker
from gateway.routing.health import Health


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_listener_hears_closed_to_open_once_per_outage() -> None:
    clock = Clock()
    h = Health(CircuitBreaker(failures=2, cooldown_s=5), now=clock)
    heard: list[tuple[str, float]] = []
    h.on_open(lambda dep, cooldown: heard.append((dep, cooldown)))
    h.failure("a")
    assert heard == []
    assert h.failure("a")
    assert heard == [("a", 5.0)]
    clock.t += 6
    assert h.available("a")  # the probe
    assert h.failure("a")  # failed probe: re-opened, the same outage
    assert heard == [("a", 5.0)]
    clock.t += 6
    assert h.available("a")
    h.success("a")  # closed again
    h.failure("a")
    h.failure("a")
    assert heard == [("a", 5.0), ("a", 5.0)]


def test_retry_after_open_reports_its_cooldown_and_a_failing_listener_is_contained() -> None:
    h = Health(CircuitBreaker(failures=5, cooldown_s=5, max_cooldown_s=60), now=Clock())
    heard: list[tuple[str, float]] = []

    def broken(dep: str, cooldown: float) -> None:
        raise RuntimeError("listener bug")

    h.on_open(broken)
    h.on_open(lambda dep, cooldown: heard.append((dep, cooldown)))
    assert h.failure("b", retry_after=20)
    assert heard == [("b", 20.0)]
