"""`latency`: the lowest expected latency, from each deployment's smoothed history and its queue.

Expected latency = base × (1 + queue_penalty × outstanding), the "peak EWMA" cost of Finagle
and Linkerd: a fast deployment stays first until enough is queued on it that a slower idle one
would answer sooner. The base is the smoothed time to first token for streaming calls (what a
streaming user waits for) and the smoothed total latency otherwise, each standing in for the
other when only one is known.

A deployment with no history is explored first while it is idle, so a new or re-admitted
deployment gets measured instead of starved; once it has requests in flight it is costed at the
mean of the known ones until its first result lands. History ages out in the signal collector
(`latency_ttl_s`), so a deployment that was slow once is re-explored later instead of never.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.call import Call
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals
from gateway.routing.strategies.pool import Rotation, outstanding, routable

# Cost added per outstanding request, as a fraction of the base latency. 1.0 is Finagle's
# (queue of one doubles the expected latency): right for a backend whose new request waits
# behind the queue. vLLM batches, so running requests cost less than that; waiting ones don't.
QUEUE_PENALTY = 1.0


def _base(load: EndpointLoad, stream: bool) -> float | None:
    if stream:
        return load.ttft_ewma_s if load.ttft_ewma_s is not None else load.latency_ewma_s
    return load.latency_ewma_s if load.latency_ewma_s is not None else load.ttft_ewma_s


class LowestLatency:
    """Lowest base × (1 + penalty × outstanding) first; unknown idle deployments before all."""

    def __init__(self, seed: int | None = None, *, queue_penalty: float = QUEUE_PENALTY) -> None:
        self._rotation = Rotation()
        self._penalty = queue_penalty

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        live = routable(candidates)
        if len(live) < 2:
            return live
        loads = [signals.load(t.id) for t in live]
        bases = [_base(ld, call.stream) for ld in loads]
        known = [b for b in bases if b is not None]
        fill = sum(known) / len(known) if known else 1.0
        rot = self._rotation
        scored: list[tuple[int, float, int, Target]] = []
        for t, ld, b in zip(live, loads, bases, strict=True):
            q = outstanding(ld)
            if b is None and q == 0:  # explore: idle and never measured
                scored.append((0, 0.0, rot.recency(t), t))
            else:
                cost = (fill if b is None else b) * (1.0 + self._penalty * q)
                scored.append((1, cost, rot.recency(t), t))
        scored.sort(key=lambda s: s[:3])
        return rot.chosen([s[3] for s in scored])
