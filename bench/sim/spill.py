"""`python -m bench.sim.spill`: cost-aware spill (`models.*.spill`) on the simulator's
self-hosted cluster plus a simulated external provider, over a load sweep.

Every turn is planned by the gateway's own `Router` (gateway/routing/plan.py) for a policy
built here (`policy`): 8 self-hosted deployments (`gpu_cost_per_hour`) of `llama` ordered by
the self-hosted default strategy, and an external model `ext` with a per-token price. Three
kinds of setup, the same workload and seeds:

- `self-hosted`: no spill rule, every turn on the GPUs;
- `external`: every turn planned for `ext` (no GPUs: none are paid for);
- `spill T`: `llama` with `spill: {ttft_ms: T, to: [ext]}`: the gateway's `Spill` predicts
  the TTFT of the strategy's pick from the scraped queue and its own picks, and puts `ext`
  first past `T`.

The load is the chat-short workload at a fraction of the self-hosted cluster's capacity
(`capacity_rps`: with every prompt uncached but the system prompts, so prefix caching
makes the cluster saturate only past about 1.25), plus `burst`: on/off arrivals, 10 s on at
2.5x capacity, 10 s off. The
external provider (`ExternalProvider`) has no queue: a lognormal TTFT (median
`EXT_TTFT_MEDIAN_S`), `EXT_TOKENS_PER_S` after it, and an error rate; an error comes back after
`EXT_ERROR_S` and the turn is tried once more there (its TTFT includes the failed attempt).
A turn whose first token comes after `TIMEOUT_S` counts as a timeout (the simulator does not
cancel it: a client would have). Cost per 1,000 turns (`cost_per_1k`): the GPUs' hours over
the measured window — paid whether busy or not — plus the provider's price of the turns sent
there (the whole prompt: its history is not cached there). Reported on `HELDOUT_SEEDS`; there
is nothing tuned (the thresholds are a sweep). Writes bench/results/spill.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.sim.__main__ import _pct
from bench.sim.backend import Request
from bench.sim.cluster import SimConfig, run
from bench.sim.families import _CHAT, DURATION_S, HELDOUT_SEEDS, WARMUP_S
from gateway.call import Call
from gateway.policy.models import CircuitBreaker, Policy
from gateway.providers.base import Target
from gateway.routing.base import NO_SIGNALS, Signals
from gateway.routing.health import Health
from gateway.routing.plan import Router

RESULTS = Path(__file__).resolve().parents[1] / "results" / "spill.json"
BACKENDS = 8
GPU_COST_PER_HOUR = 2.50  # per backend, USD
EXT_PRICE_PER_M = (0.18, 0.18)  # USD per million input, output tokens
EXT_TTFT_MEDIAN_S = 0.35
EXT_TTFT_SIGMA = 0.4  # of the log: p99 ~ 2.5x the median
EXT_TOKENS_PER_S = 100.0
EXT_ERROR_RATE = 0.005
EXT_ERROR_S = 0.3
TIMEOUT_S = 30.0
LOADS = ("0.5", "1.0", "1.25", "1.5", "2.0", "burst")
THRESHOLDS_MS = (250.0, 500.0, 1000.0)
SETUPS = ("self-hosted", "external", *(f"spill {t:g}" for t in THRESHOLDS_MS))


def policy(setup: str, seed: int | None = None, backends: int = BACKENDS) -> Policy:
    """The policy a setup routes by: `llama` on the GPUs (named as `cluster.run` names its
    backends; with the spill rule of `spill T`) and the external model `ext`."""
    gpus = [{"provider": "gpu", "model": "llama", "name": f"gpu-{i}",
             "gpu_cost_per_hour": GPU_COST_PER_HOUR} for i in range(backends)]
    llama: dict[str, Any] = {"deployments": gpus}
    if setup.startswith("spill "):
        llama["spill"] = {"ttft_ms": float(setup.split()[1]), "to": ["ext"]}
    return Policy.model_validate({
        "router": {"seed": seed},
        "providers": {"gpu": {"kind": "vllm", "base_url": "http://gpu:8000/v1"},
                      "api": {"kind": "openai", "base_url": "http://api.example/v1"}},
        "models": {"llama": llama, "ext": {"deployments": [
            {"provider": "api", "model": "llama-3.1-8b", "name": "ext",
             "pricing": [{"input": EXT_PRICE_PER_M[0], "output": EXT_PRICE_PER_M[1]}]}]}}})


class PlanStrategy:
    """The simulator's strategy slot filled by the gateway's `Router`: the plan's attempts for
    the setup's model, planned against the signals the simulator's gateway holds."""

    def __init__(self, setup: str, seed: int, backends: int = BACKENDS) -> None:
        self._signals: Signals = NO_SIGNALS
        self.router = Router(policy(setup, seed, backends), Health(CircuitBreaker()),
                             lambda: self._signals)
        self.model = "ext" if setup == "external" else "llama"
        self.reasons: Counter[str] = Counter()

    def order(self, candidates: Sequence[Target], signals: Signals, call: Call) -> list[Target]:
        self._signals = signals
        call.model = self.model
        plan = self.router.plan(call)
        if plan.reason is not None:
            self.reasons[plan.reason.split(":")[0]] += 1
        return list(plan.attempts)


class ExternalProvider:
    """An external API without a queue of ours: lognormal TTFT, a steady token rate, errors."""

    def __init__(self, seed: int, ttft_median_s: float = EXT_TTFT_MEDIAN_S,
                 sigma: float = EXT_TTFT_SIGMA, tokens_per_s: float = EXT_TOKENS_PER_S,
                 error_rate: float = EXT_ERROR_RATE, error_s: float = EXT_ERROR_S) -> None:
        self.rng = random.Random(seed)
        self.mu = math.log(ttft_median_s)
        self.sigma = sigma
        self.tokens_per_s = tokens_per_s
        self.error_rate = error_rate
        self.error_s = error_s
        self.failed: set[tuple[int, int]] = set()  # (session, turn) that met an error

    def send(self, r: Request, deployment_id: str, now: float) -> float:
        start = now
        if self.rng.random() < self.error_rate:  # a 5xx: the gateway tries it once more
            self.failed.add((r.session, r.turn))
            start += self.error_s
        r.first_token = start + self.rng.lognormvariate(self.mu, self.sigma)
        r.finish = r.first_token + max(0, r.output_tokens - 1) / self.tokens_per_s
        return r.finish


def cost_per_1k(turns: int, window_s: float, gpus: int, gpu_cost_per_hour: float,
                ext_prompt_tokens: int, ext_output_tokens: int,
                price_per_m: tuple[float, float] = EXT_PRICE_PER_M) -> dict[str, float]:
    """USD per 1,000 turns: the GPUs' cost over the window (paid busy or idle) spread over the
    turns, plus the provider's price of the tokens sent to it."""
    gpu = gpus * gpu_cost_per_hour * window_s / 3600.0
    ext = (ext_prompt_tokens * price_per_m[0] + ext_output_tokens * price_per_m[1]) / 1e6
    per = 1000.0 / turns if turns else 0.0
    return {"gpu_usd_per_1k": gpu * per, "external_usd_per_1k": ext * per,
            "usd_per_1k": (gpu + ext) * per}


def config(load: str, seed: int, duration_s: float, warmup_s: float) -> SimConfig:
    if load == "burst":  # 1.25x capacity on average: 2.5x while on
        wl = dataclasses.replace(_CHAT, burst_on_s=10.0, burst_off_s=10.0)
        return SimConfig(backends=BACKENDS, duration_s=duration_s, warmup_s=warmup_s,
                         seed=seed, load=1.25, workload=wl)
    return SimConfig(backends=BACKENDS, duration_s=duration_s, warmup_s=warmup_s, seed=seed,
                     load=float(load), workload=_CHAT)


Job = tuple[str, str, int, float, float]


def _one(job: Job) -> dict[str, Any]:
    load, setup, seed, duration_s, warmup_s = job
    cfg = config(load, seed, duration_s, warmup_s)
    strategy = PlanStrategy(setup, seed, cfg.backends)
    ext = ExternalProvider(seed + 31)
    out = run(cfg, "prefix-load", strategy=strategy, external=ext)
    reqs = out.requests
    outside = [r for r in reqs if r.backend < 0]
    return {"load": load, "setup": setup, "seed": seed, "window_s": out.window_s,
            "backends": cfg.backends,
            "ttft": [r.first_token - r.arrival for r in reqs],
            "external": len(outside),
            "ext_prompt": sum(r.prompt_tokens for r in outside),
            "ext_output": sum(r.output_tokens for r in outside),
            "ext_errors": sum(1 for r in outside if (r.session, r.turn) in ext.failed),
            "reasons": dict(strategy.reasons)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled over seeds: TTFT, share spilled, cost, timeouts and external errors."""
    ttft = sorted(x for r in rows for x in r["ttft"])
    turns = len(ttft)
    gpus = 0 if rows[0]["setup"] == "external" else rows[0]["backends"]
    window = sum(r["window_s"] for r in rows)
    cost = cost_per_1k(turns, window, gpus, GPU_COST_PER_HOUR,
                       sum(r["ext_prompt"] for r in rows), sum(r["ext_output"] for r in rows))
    external = sum(r["external"] for r in rows)
    return {"turns": turns, "ttft_p50_ms": 1000 * _pct(ttft, 50),
            "ttft_p99_ms": 1000 * _pct(ttft, 99),
            "external_share": external / turns if turns else 0.0, **cost,
            "timeouts": sum(1 for x in ttft if x > TIMEOUT_S),
            "external_errors_retried": sum(r["ext_errors"] for r in rows)}


def experiment(loads: Sequence[str], setups: Sequence[str], seeds: Sequence[int],
               duration_s: float, warmup_s: float, workers: int) -> dict[str, dict[str, Any]]:
    jobs: list[Job] = [(load, setup, seed, duration_s, warmup_s)
                       for load in loads for setup in setups for seed in seeds]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_one, jobs))
    else:
        done = [_one(j) for j in jobs]
    out: dict[str, dict[str, Any]] = {}
    for load in loads:
        out[load] = {s: summary([r for r in done if r["load"] == load and r["setup"] == s])
                     for s in setups}
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| load | setup | TTFT p50 ms | TTFT p99 ms | spilled | $ / 1k turns (GPU + API) "
             f"| timeouts (> {TIMEOUT_S:g} s) | API errors retried |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for load, by in results.items():
        for setup, s in by.items():
            lines.append(
                f"| {load} | {setup} | {s['ttft_p50_ms']:.0f} | {s['ttft_p99_ms']:.0f} | "
                f"{100 * s['external_share']:.1f} % | {s['usd_per_1k']:.3f} "
                f"({s['gpu_usd_per_1k']:.3f} + {s['external_usd_per_1k']:.3f}) | "
                f"{s['timeouts']} | {s['external_errors_retried']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim.spill",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", default=",".join(LOADS),
                    help="fractions of the self-hosted capacity, and/or `burst`")
    ap.add_argument("--setups", default=",".join(SETUPS),
                    help="`self-hosted`, `external`, `spill MS` (comma-separated)")
    ap.add_argument("--seeds", default=",".join(map(str, HELDOUT_SEEDS)))
    ap.add_argument("--duration", type=float, default=DURATION_S)
    ap.add_argument("--warmup", type=float, default=WARMUP_S)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    seeds = tuple(int(x) for x in args.seeds.split(","))
    started = time.perf_counter()
    results = experiment(args.loads.split(","), args.setups.split(","), seeds, args.duration,
                         args.warmup, args.workers)
    print(table(results))
    wall = time.perf_counter() - started
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"\nseeds {seeds}, {args.duration:g} s each; {wall:.0f} s wall, {cpu:.0f} s CPU",
          file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python -m bench.sim.spill " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "seeds": seeds, "duration_s": args.duration, "warmup_s": args.warmup,
        "backends": BACKENDS, "gpu_cost_per_hour": GPU_COST_PER_HOUR,
        "external": {"price_per_m": EXT_PRICE_PER_M, "ttft_median_s": EXT_TTFT_MEDIAN_S,
                     "ttft_sigma": EXT_TTFT_SIGMA, "tokens_per_s": EXT_TOKENS_PER_S,
                     "error_rate": EXT_ERROR_RATE},
        "timeout_s": TIMEOUT_S, "wall_s": wall, "cpu_s": cpu, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
