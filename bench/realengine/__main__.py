"""`python -m bench.realengine`: round-robin (`weighted`) against `prefix-load` across real
`local-backend` torch processes; prints one table row per strategy (docs/routing.md,
"Real-engine check")."""

from __future__ import annotations

import argparse
import os

from bench.realengine.run import Workload, run, table


def main() -> None:
    d = Workload()
    ap = argparse.ArgumentParser(prog="python -m bench.realengine", description=__doc__)
    ap.add_argument("--backends", type=int, default=d.backends)
    ap.add_argument("--prefixes", type=int, default=d.prefixes)
    ap.add_argument("--prefix-tokens", type=int, default=d.prefix_tokens)
    ap.add_argument("--rounds", type=int, default=d.rounds)
    ap.add_argument("--concurrency", type=int, default=d.concurrency)
    ap.add_argument("--torch-threads", type=int, default=d.torch_threads)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--model", choices=["tiny", "small"], default=d.model,
                    help="tiny: the test model; small: 256 wide, 4 layers (prefill dominates)")
    ap.add_argument("--strategies", default="weighted,prefix-load",
                    help="comma-separated `strategy:` values, one phase each")
    a = ap.parse_args()
    w = Workload(backends=a.backends, prefixes=a.prefixes, prefix_tokens=a.prefix_tokens,
                 rounds=a.rounds, concurrency=a.concurrency, seed=a.seed,
                 torch_threads=a.torch_threads, model=a.model)
    load = os.getloadavg()
    phases = run(w, tuple(a.strategies.split(",")))
    print(f"model {w.model}, {w.backends} backends, {w.prefixes} prefixes x "
          f"{w.prefix_tokens} tokens, "
          f"{w.rounds} rounds ({w.rounds * w.prefixes} requests), concurrency "
          f"{w.concurrency}, seed {w.seed}; load average before {load[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f}")
    print(table(w, phases))


if __name__ == "__main__":
    main()
