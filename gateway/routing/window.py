"""Per-deployment traffic over the last minutes, in memory: attempts per second, error rate and
TTFT percentiles for the console's deployments page (`/ui/deployments`, `/admin/deployments`).

Fed by `SignalCollector.end`, which the proxy already calls once per attempt, so the request
path gains one dict lookup and a few integer additions — no I/O, no lock (one event loop),
no allocation once a deployment's buckets exist. Time is cut into fixed buckets (10 s by
default) kept in a ring; TTFT goes into a log-spaced histogram per bucket, so p50/p95 over the
window are read from summed counts, accurate to one bin (~5 %), whatever the traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# TTFT histogram: bin i holds values in [BASE * GROWTH**i, BASE * GROWTH**(i+1)); 1 ms to
# ~2 hours in 160 bins of 10 % each (a percentile is off by at most half a bin, 5 %).
_BASE_S = 0.001
_GROWTH = 1.1
_BINS = 160
_LOG_GROWTH = math.log(_GROWTH)


def _bin(seconds: float) -> int:
    if seconds <= _BASE_S:
        return 0
    return min(_BINS - 1, int(math.log(seconds / _BASE_S) / _LOG_GROWTH))


def _bin_value(i: int) -> float:
    """The geometric middle of bin i, in seconds."""
    return _BASE_S * _GROWTH ** (i + 0.5)


class _Bucket:
    __slots__ = ("epoch", "errors", "requests", "ttft", "ttft_n")

    def __init__(self) -> None:
        self.epoch = -1
        self.requests = 0
        self.errors = 0
        self.ttft_n = 0
        self.ttft: list[int] | None = None  # allocated on the first TTFT of the bucket

    def reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.requests = self.errors = self.ttft_n = 0
        if self.ttft is not None:
            for i in range(_BINS):
                self.ttft[i] = 0


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One deployment's traffic over the window (attempts, not requests: a fallback counts
    on each deployment it tried)."""

    window_s: float
    attempts: int
    errors: int
    requests_per_s: float
    error_rate: float | None  # None without attempts
    ttft_p50_s: float | None  # None without a measured TTFT
    ttft_p95_s: float | None


class TrafficWindow:
    """Attempts, failures and TTFTs per deployment over the last `window_s` seconds."""

    def __init__(self, window_s: float = 900.0, bucket_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.window_s = window_s
        self._bucket_s = bucket_s
        self._n = math.ceil(window_s / bucket_s)
        self._clock = clock
        self._rings: dict[str, list[_Bucket]] = {}

    def record(self, deployment_id: str, ok: bool, ttft_s: float | None) -> None:
        """One attempt ended (the request path: memory only)."""
        epoch = int(self._clock() / self._bucket_s)
        ring = self._rings.get(deployment_id)
        if ring is None:
            ring = self._rings[deployment_id] = [_Bucket() for _ in range(self._n)]
        b = ring[epoch % self._n]
        if b.epoch != epoch:
            b.reset(epoch)
        b.requests += 1
        if not ok:
            b.errors += 1
        if ttft_s is not None and ttft_s >= 0:
            if b.ttft is None:
                b.ttft = [0] * _BINS
            b.ttft[_bin(ttft_s)] += 1
            b.ttft_n += 1

    def stats(self, deployment_id: str) -> WindowStats:
        """The deployment's figures over the buckets still inside the window."""
        now_epoch = int(self._clock() / self._bucket_s)
        live = [b for b in self._rings.get(deployment_id, ())
                if b.epoch >= 0 and now_epoch - b.epoch < self._n]
        attempts = sum(b.requests for b in live)
        errors = sum(b.errors for b in live)
        hist = [0] * _BINS
        n = 0
        for b in live:
            if b.ttft is not None and b.ttft_n:
                n += b.ttft_n
                for i, c in enumerate(b.ttft):
                    if c:
                        hist[i] += c
        return WindowStats(
            window_s=self.window_s, attempts=attempts, errors=errors,
            requests_per_s=attempts / self.window_s,
            error_rate=errors / attempts if attempts else None,
            ttft_p50_s=_percentile(hist, n, 0.50), ttft_p95_s=_percentile(hist, n, 0.95))


def _percentile(hist: list[int], n: int, q: float) -> float | None:
    """The value at rank ceil(q * n) (nearest rank, as Prometheus' summaries define it)."""
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            return _bin_value(i)
    return _bin_value(_BINS - 1)  # pragma: no cover - ranks never exceed n
