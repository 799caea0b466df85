"""Fair multi-tenant flow control for saturated self-hosted pools (docs/routing.md, "Flow
control"): `scheduler.py` is the pure queue, `pool.py` the gateway's pools, `stage.py` the
request stage that puts them on the request path."""
