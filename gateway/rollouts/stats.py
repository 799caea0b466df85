"""The measurements a rollout gates on, and the closed-form tests it gates with.

Latencies go into fixed log-spaced histograms (the same bucket edges on every replica, so
Redis can add them field by field); rates are counts; cost is a sum and a sum of squares.

Tests (docs/rollouts.md, "Statistics"), all one-sided at the rollout's `confidence`:
- a share (errors, `length` cuts) against an absolute cap: the binomial z-test of
  p_candidate > cap;
- a share against a multiple r of the baseline's: the two-proportion (Wald) z-test of
  p_c - r·p_b > 0, each share floored at 0.5/n so that zero counts still have a variance;
- a quantile (p95 TTFT…) against r times the baseline's: the baseline's quantile is taken at
  its distribution-free upper confidence bound (an order statistic), and the candidate
  breaches when significantly more than (1 - q) of its samples exceed r times that bound —
  a binomial exceedance test, valid whatever the latency distribution's shape;
- a mean (cost per request) against r times the baseline's: Welch's z-test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

# Bucket i holds values in [LOW·GROWTH^(i-1), LOW·GROWTH^i); bucket 0 everything below LOW.
# 5 % wide buckets bound a quantile's error at 5 %; 1 ms .. ~25 min fits in 290 buckets.
LOW_S = 0.001
GROWTH = 1.05
BUCKETS = 290
_LOG_GROWTH = math.log(GROWTH)
# Field names in the Redis hash: scalars by name, histogram buckets as "<h>:<bucket>".
_SCALARS = ("requests", "served", "errors", "length_cut", "replies")
_HISTS = {"t": "ttft", "p": "tpot", "e": "latency"}


def bucket_of(seconds: float) -> int:
    if seconds < LOW_S:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(seconds / LOW_S) / _LOG_GROWTH))


def bucket_bounds(i: int) -> tuple[float, float]:
    if i == 0:
        return 0.0, LOW_S
    return LOW_S * GROWTH ** (i - 1), LOW_S * GROWTH ** i


@dataclass(slots=True)
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0

    def add(self, seconds: float, k: int = 1) -> None:
        b = bucket_of(seconds)
        self.counts[b] = self.counts.get(b, 0) + k
        self.n += k

    def merge_bucket(self, b: int, k: int) -> None:
        self.counts[b] = self.counts.get(b, 0) + k
        self.n += k

    def quantile(self, q: float) -> float:
        """The q-quantile, interpolated within its bucket (geometric midpoint rule)."""
        if self.n == 0:
            return math.nan
        rank = q * self.n
        seen = 0
        for b in sorted(self.counts):
            c = self.counts[b]
            if seen + c >= rank:
                lo, hi = bucket_bounds(b)
                frac = (rank - seen) / c if c else 0.0
                return lo + (hi - lo) * frac
            seen += c
        return bucket_bounds(max(self.counts))[1]

    def above(self, x: float) -> float:
        """How many samples exceed x (a fraction of x's own bucket, linearly)."""
        b0 = bucket_of(x)
        total = 0.0
        for b, c in self.counts.items():
            if b > b0:
                total += c
            elif b == b0:
                lo, hi = bucket_bounds(b)
                total += c * max(0.0, min(1.0, (hi - x) / (hi - lo))) if hi > lo else 0.0
        return total


@dataclass(slots=True)
class ArmStats:
    """One arm's measurements over one step (all replicas' counts added)."""

    requests: int = 0
    """Requests measured (served ones and shadow ones)."""
    served: int = 0
    """Of them, requests that served a client (not shadow)."""
    errors: int = 0
    length_cut: int = 0
    replies: int = 0
    """Requests that got a reply (the denominator of the length share)."""
    cost_sum: float = 0.0
    cost_sq: float = 0.0
    ttft: Histogram = field(default_factory=Histogram)
    tpot: Histogram = field(default_factory=Histogram)
    latency: Histogram = field(default_factory=Histogram)

    def to_fields(self) -> dict[str, float]:
        out: dict[str, float] = {k: getattr(self, k) for k in _SCALARS
                                 if getattr(self, k)}
        if self.cost_sum:
            out["cost_sum"] = self.cost_sum
            out["cost_sq"] = self.cost_sq
        for short, name in _HISTS.items():
            for b, c in getattr(self, name).counts.items():
                out[f"{short}:{b}"] = c
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, str | float | int]) -> ArmStats:
        s = cls()
        for k, v in fields.items():
            if k in _SCALARS:
                setattr(s, k, int(float(v)))
            elif k in ("cost_sum", "cost_sq"):
                setattr(s, k, float(v))
            else:
                short, _, b = k.partition(":")
                name = _HISTS.get(short)
                if name is not None and b.isdigit():
                    getattr(s, name).merge_bucket(int(b), int(float(v)))
        return s

    def add(self, other: ArmStats) -> None:
        self.requests += other.requests
        self.served += other.served
        self.errors += other.errors
        self.length_cut += other.length_cut
        self.replies += other.replies
        self.cost_sum += other.cost_sum
        self.cost_sq += other.cost_sq
        for name in _HISTS.values():
            mine = getattr(self, name)
            for b, c in getattr(other, name).counts.items():
                mine.merge_bucket(b, c)


def z_critical(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def rate_above_cap(k: int, n: int, cap: float) -> float:
    """z of p̂ = k/n against H0: p <= cap (binomial, normal approximation)."""
    if n == 0:
        return 0.0
    p0 = min(max(cap, 0.5 / n), 1 - 0.5 / n)
    return (k / n - cap) / math.sqrt(p0 * (1 - p0) / n)


def rate_above_ratio(kc: int, nc: int, kb: int, nb: int, ratio: float) -> float:
    """z of p̂_c - r·p̂_b against H0: p_c <= r·p_b (two proportions, Wald variance)."""
    if nc == 0 or nb == 0:
        return 0.0
    pc, pb = kc / nc, kb / nb
    vc = max(pc, 0.5 / nc) * (1 - min(pc, 1 - 0.5 / nc)) / nc
    vb = max(pb, 0.5 / nb) * (1 - min(pb, 1 - 0.5 / nb)) / nb
    return (pc - ratio * pb) / math.sqrt(vc + ratio * ratio * vb)


def quantile_upper_bound(h: Histogram, q: float, z: float) -> float:
    """Distribution-free upper confidence bound of h's q-quantile: the order statistic at rank
    n·q + z·sqrt(n·q·(1-q)) (normal approximation of the binomial count below the quantile)."""
    n = h.n
    if n == 0:
        return math.nan
    rank_q = min(1.0, q + z * math.sqrt(q * (1 - q) / n))
    return h.quantile(rank_q)


def quantile_exceedance(cand: Histogram, threshold: float, q: float) -> float:
    """z of the candidate's share above ``threshold`` against H0: share <= 1 - q (i.e. its
    q-quantile is at most the threshold)."""
    if cand.n == 0:
        return 0.0
    return rate_above_cap(round(cand.above(threshold)), cand.n, 1 - q)


def mean_above_ratio(c: ArmStats, b: ArmStats, ratio: float) -> float:
    """Welch's z of mean_c - r·mean_b against H0: mean_c <= r·mean_b (cost per request)."""
    nc, nb = c.requests, b.requests
    if nc < 2 or nb < 2:
        return 0.0
    mc, mb = c.cost_sum / nc, b.cost_sum / nb
    vc = max(c.cost_sq / nc - mc * mc, 0.0) / nc
    vb = max(b.cost_sq / nb - mb * mb, 0.0) / nb
    se = math.sqrt(vc + ratio * ratio * vb)
    diff = mc - ratio * mb
    if se == 0.0:  # every request cost the same on each side: the difference is exact
        return math.inf if diff > 1e-12 else 0.0
    return diff / se
