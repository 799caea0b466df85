"""The 15-minute traffic window behind the console's deployments page."""

from __future__ import annotations

import pytest

from gateway.routing.window import TrafficWindow


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_counts_attempts_and_errors_per_deployment() -> None:
    clock = Clock()
    w = TrafficWindow(window_s=900, bucket_s=10, clock=clock)
    for ok in (True, True, False, True):
        w.record("a", ok, None)
    w.record("b", False, None)
    a, b = w.stats("a"), w.stats("b")
    assert (a.attempts, a.errors, a.error_rate) == (4, 1, 0.25)
    assert a.requests_per_s == pytest.approx(4 / 900)
    assert (b.attempts, b.errors, b.error_rate) == (1, 1, 1.0)
    none = w.stats("never")
    assert (none.attempts, none.error_rate, none.ttft_p50_s) == (0, None, None)


def test_ttft_percentiles_are_within_one_bin() -> None:
    clock = Clock()
    w = TrafficWindow(clock=clock)
    # 1..100 ms: p50 is 50 ms, p95 is 95 ms (nearest rank).
    for ms in range(1, 101):
        w.record("a", True, ms / 1000)
    s = w.stats("a")
    assert s.ttft_p50_s == pytest.approx(0.050, rel=0.06)
    assert s.ttft_p95_s == pytest.approx(0.095, rel=0.06)


def test_old_buckets_leave_the_window() -> None:
    clock = Clock()
    w = TrafficWindow(window_s=60, bucket_s=10, clock=clock)
    w.record("a", False, 0.5)
    clock.t += 30
    w.record("a", True, 0.01)
    assert w.stats("a").attempts == 2
    clock.t += 40  # the first bucket is now 70 s old
    s = w.stats("a")
    assert (s.attempts, s.errors) == (1, 0)
    assert s.ttft_p95_s == pytest.approx(0.01, rel=0.06)
    clock.t += 60
    assert w.stats("a").attempts == 0
    # A reused ring slot starts from zero.
    w.record("a", True, 2.0)
    s = w.stats("a")
    assert s.attempts == 1 and s.ttft_p50_s == pytest.approx(2.0, rel=0.06)


def test_failures_without_ttft_do_not_move_the_percentiles() -> None:
    w = TrafficWindow(clock=Clock())
    w.record("a", True, 0.2)
    for _ in range(10):
        w.record("a", False, None)
    assert w.stats("a").ttft_p95_s == pytest.approx(0.2, rel=0.06)
