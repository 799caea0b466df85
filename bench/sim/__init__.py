"""A discrete-event simulator of vLLM-like backends behind the gateway's routing strategies.

`python -m bench.sim` runs every strategy on the same seeded workload and prints TTFT, throughput
and prefix-cache hit rate; see docs/routing.md for the model and the results.
"""
