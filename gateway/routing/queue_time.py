"""Queue time as backends report it: vLLM's `vllm:request_queue_time_seconds` histogram (time
a request waited before it was scheduled), turned from two cumulative totals into the mean
wait of the requests scheduled between two scrapes — a gauge an autoscaler and a dashboard
can read directly, per deployment.

Counters reset when a backend restarts: a total that went down starts a new baseline and
reports nothing for that interval, rather than a negative wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

QUEUE_SUM = "vllm:request_queue_time_seconds_sum"
QUEUE_COUNT = "vllm:request_queue_time_seconds_count"
NAMES = (QUEUE_SUM, QUEUE_COUNT)


def queue_totals(samples: Sequence[Any]) -> tuple[float, float] | None:
    """(seconds, requests) summed across engines, or None when the backend exports neither."""
    total = count = 0.0
    seen = False
    for s in samples:
        if s.name == QUEUE_SUM:
            total += s.value
            seen = True
        elif s.name == QUEUE_COUNT:
            count += s.value
            seen = True
    return (total, count) if seen else None


class QueueTimes:
    """Deployment id → mean queue seconds over its last scrape interval (None: no request
    was scheduled in it, or no two scrapes yet)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}
        self.mean_s: dict[str, float | None] = {}

    def update(self, deployment_id: str, totals: tuple[float, float] | None) -> None:
        if totals is None:
            self._last.pop(deployment_id, None)
            self.mean_s.pop(deployment_id, None)
            return
        prev = self._last.get(deployment_id)
        self._last[deployment_id] = totals
        if prev is None or totals[1] < prev[1] or totals[0] < prev[0]:
            self.mean_s[deployment_id] = None  # first scrape, or the backend restarted
            return
        done = totals[1] - prev[1]
        self.mean_s[deployment_id] = (totals[0] - prev[0]) / done if done > 0 else None
