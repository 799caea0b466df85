"""`least-busy`: the deployment with the fewest requests ahead of a new one.

Busy = this replica's in-flight requests + the backend's reported queue (`vllm:num_requests_waiting`
from the last fresh scrape). With no fresh scrape it is in-flight alone, which is exact for one
gateway replica and a lower bound with several. Ties rotate, so an idle pool is used round-robin
rather than always starting with the first deployment in the policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import Signals
from gateway.routing.strategies.pool import Rotation, outstanding, routable


class LeastBusy:
    """Fewest outstanding requests first; ties in round-robin order."""

    def __init__(self, seed: int | None = None) -> None:
        self._rotation = Rotation()

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        rot = self._rotation
        live = routable(candidates)
        return rot.chosen(sorted(live, key=lambda t: (outstanding(signals.load(t.id)),
                                                      rot.recency(t))))
