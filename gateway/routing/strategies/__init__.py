"""Routing strategies, one per file; `gateway.routing.registry` maps policy names to them.

Each one orders the healthy candidates of a model from data handed in (`Signals`, the `Call`):
no I/O, no clocks it does not own, no module state.
"""
