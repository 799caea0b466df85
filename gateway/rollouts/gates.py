"""Gate verdicts: each gate of a rollout, candidate against baseline, over one step's window.

A verdict is `breach` only when the gate's test is significant at the rollout's confidence
with at least `min_samples` on each side; `wait` while either side has fewer samples than
that; `hold` otherwise. Pure functions of the two arms' `ArmStats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.policy.rollouts import RateGate, RatioGate, Rollout
from gateway.rollouts.stats import (
    ArmStats,
    Histogram,
    mean_above_ratio,
    quantile_exceedance,
    quantile_upper_bound,
    rate_above_cap,
    rate_above_ratio,
    z_critical,
)

Verdict = Literal["hold", "breach", "wait"]


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: str
    """`error_rate.max`, `ttft_p95.max_ratio`, …"""
    verdict: Verdict
    candidate: float
    """The candidate's figure (share, seconds, USD)."""
    baseline: float
    """The baseline's figure, or the cap for an absolute gate."""
    candidate_n: int
    baseline_n: int
    z: float

    def describe(self) -> str:
        return (f"{self.gate}: candidate {self.candidate:.6g} (n={self.candidate_n}) vs "
                f"baseline {self.baseline:.6g} (n={self.baseline_n}), z={self.z:.2f}")

    def to_json(self) -> dict[str, object]:
        return {"gate": self.gate, "verdict": self.verdict, "candidate": _num(self.candidate),
                "baseline": _num(self.baseline), "candidate_n": self.candidate_n,
                "baseline_n": self.baseline_n, "z": _num(self.z)}


def _num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(x, 9)


def _share(k: int, n: int) -> float:
    return k / n if n else math.nan


def evaluate(rollout: Rollout, cand: ArmStats, base: ArmStats) -> list[GateResult]:
    """Every configured gate's verdict."""
    g = rollout.gates
    z_crit = z_critical(rollout.confidence)
    need = rollout.min_samples
    out: list[GateResult] = []
    if g.error_rate is not None:
        out += _rate("error_rate", g.error_rate, cand.errors, cand.requests, base.errors,
                     base.requests, need, z_crit)
    if g.length_share is not None:
        out += _rate("length_share", g.length_share, cand.length_cut, cand.replies,
                     base.length_cut, base.replies, need, z_crit)
    quantiles: list[tuple[str, RatioGate | None, Callable[[ArmStats], Histogram], float]] = [
        ("ttft_p95", g.ttft_p95, lambda s: s.ttft, 0.95),
        ("tpot_p50", g.tpot_p50, lambda s: s.tpot, 0.50),
        ("tpot_p95", g.tpot_p95, lambda s: s.tpot, 0.95),
        ("latency_p95", g.latency_p95, lambda s: s.latency, 0.95),
    ]
    for name, gate, hist, q in quantiles:
        if gate is not None:
            hc, hb = hist(cand), hist(base)
            if hc.n == 0 and hb.n == 0 and cand.requests >= need and base.requests >= need:
                # Nothing of this kind on either arm (TTFT of a model served without streams):
                # nothing to compare, so it cannot hold a rollout back.
                out.append(GateResult(f"{name}.max_ratio", "hold", math.nan, math.nan, 0, 0,
                                      0.0))
                continue
            out.append(_quantile(name, gate, hc, hb, q, need, z_crit))
    if g.cost_per_request is not None:
        out.append(_cost(g.cost_per_request, cand, base, need, z_crit))
    return out


def _verdict(z: float, nc: int, nb: int, need: int, z_crit: float) -> Verdict:
    if nc < need or nb < need:
        return "wait"
    return "breach" if z > z_crit else "hold"


def _rate(name: str, gate: RateGate, kc: int, nc: int, kb: int, nb: int, need: int,
          z_crit: float) -> list[GateResult]:
    out: list[GateResult] = []
    pc = _share(kc, nc)
    if gate.max is not None:
        z = rate_above_cap(kc, nc, gate.max)
        # The cap is absolute: only the candidate's sample size matters.
        out.append(GateResult(f"{name}.max", _verdict(z, nc, need, need, z_crit), pc,
                              gate.max, nc, nb, z))
    if gate.max_ratio is not None:
        z = rate_above_ratio(kc, nc, kb, nb, gate.max_ratio)
        out.append(GateResult(f"{name}.max_ratio", _verdict(z, nc, nb, need, z_crit), pc,
                              _share(kb, nb), nc, nb, z))
    return out


def _quantile(name: str, gate: RatioGate, cand: Histogram, base: Histogram, q: float,
              need: int, z_crit: float) -> GateResult:
    if cand.n < need or base.n < need:
        return GateResult(f"{name}.max_ratio", "wait", cand.quantile(q), base.quantile(q),
                          cand.n, base.n, 0.0)
    threshold = gate.max_ratio * quantile_upper_bound(base, q, z_crit)
    z = quantile_exceedance(cand, threshold, q)
    return GateResult(f"{name}.max_ratio", _verdict(z, cand.n, base.n, need, z_crit),
                      cand.quantile(q), base.quantile(q), cand.n, base.n, z)


def _cost(gate: RatioGate, cand: ArmStats, base: ArmStats, need: int,
          z_crit: float) -> GateResult:
    z = mean_above_ratio(cand, base, gate.max_ratio)
    mc = cand.cost_sum / cand.requests if cand.requests else math.nan
    mb = base.cost_sum / base.requests if base.requests else math.nan
    return GateResult("cost_per_request.max_ratio",
                      _verdict(z, cand.requests, base.requests, need, z_crit), mc, mb,
                      cand.requests, base.requests, z)


def first_breach(results: list[GateResult]) -> GateResult | None:
    return next((r for r in results if r.verdict == "breach"), None)


def all_hold(results: list[GateResult]) -> bool:
    """Every gate has enough samples and none is breached (no gates: vacuously true)."""
    return all(r.verdict == "hold" for r in results)
