"""The real-engine check: a `gateway serve` process routing across `local-backend` torch
processes (the tiny model, prefix cache on, CPU) on a shared-prefix workload, round-robin
against `prefix-load`. Run `python -m bench.realengine --help`."""
