"""What every strategy reads the same way: which candidates may serve, how busy one is, and a
round-robin rotation that breaks ties so an idle pool spreads instead of piling onto the first."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad


def routable(candidates: Sequence[Target]) -> list[Target]:
    """Candidates with a positive weight. The plan already drops weight 0 (drained); a strategy
    must not route to one even when handed it."""
    return [t for t in candidates if t.deployment.weight > 0]


def outstanding(load: EndpointLoad) -> int:
    """Requests ahead of a new one: ours in flight plus the backend's reported queue.

    `waiting` counts every gateway replica's queued requests (what delays a new request's first
    token); `in_flight` is exact and current for this replica between scrapes. When the scrape
    is stale or failed, `waiting` is None and this degrades to in-flight alone.
    """
    return load.in_flight + (load.waiting or 0)


class Rotation:
    """Round-robin among equals: ranks deployments by when this strategy last put them first,
    least recent first. Used as the last sort key, it rotates ties among whichever subset is
    tied this time (a fixed rotating start would favour the one after a busy deployment)."""

    __slots__ = ("_last", "_tick")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._tick = 0

    def recency(self, t: Target) -> int:
        return self._last.get(t.id, -1)

    def chosen(self, order: list[Target]) -> list[Target]:
        """Record the first of `order` as picked now; returns `order`."""
        if order:
            self._tick += 1
            self._last[order[0].id] = self._tick
        return order
