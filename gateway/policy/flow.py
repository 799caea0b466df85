"""`flow_control:` — fair multi-tenant queuing in front of saturated self-hosted pools."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FlowControl(BaseModel):
    """Hold requests in per-tenant queues while a self-hosted pool is saturated
    (docs/routing.md, "Flow control"). Example:
    `{max_in_flight_per_deployment: 32, max_waiting: 4, queue_timeout_s: 20}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    models: list[str] | None = None
    """Public model names whose deployments form a flow-controlled pool. Unset: every model
    whose deployments are all on `vllm` or `local` providers. Example: `models: [llama-3-8b]`."""
    max_in_flight_per_deployment: int = Field(32, ge=1, le=100_000)
    """Requests this gateway replica lets run at once on each deployment of a pool (the pool's
    limit is this times its deployments not in cooldown or failing health checks); past it,
    requests queue. Set it at the concurrency where a backend still meets its latency target,
    below its batch size (vLLM `max_num_seqs`): in the simulator half the batch with
    `headroom: 0.75` and `single_use_backends: 0.125` held a neighbour's TTFT p99 under a
    flood, at equal weights, to 1.06x its own alone on the held-out seeds (1.31x with
    `single_use_kv_weight: 3` instead, 2.13x with neither; 1.21x before `prefix-load`'s hot
    prefixes, which also slowed that neighbour alone; docs/routing.md, "The flood
    experiment", with its limits).
    Example: `max_in_flight_per_deployment: 24`."""
    max_waiting: int | None = Field(None, ge=0, le=100_000)
    """A deployment whose scraped `vllm:num_requests_waiting` is at least this counts as
    saturated; when every deployment of the pool is, the pool holds its in-flight count where
    it was (finished requests are replaced one for one) until a scrape says otherwise. Unset:
    queue length is not used. Example: `max_waiting: 4`."""
    max_kv_cache_usage: float | None = Field(None, gt=0, le=1)
    """Like `max_waiting`, for the scraped KV-cache use (a fraction: `0.95` is 95 %).
    Example: `max_kv_cache_usage: 0.95`."""
    queue_timeout_s: float = Field(30.0, gt=0, le=3600)
    """Longest a request waits in the queue; then it is refused with 503
    `flow_queue_timeout` and a `Retry-After` estimated from the pool's drain rate.
    Example: `queue_timeout_s: 10`."""
    max_queued: int = Field(1000, ge=0, le=1_000_000)
    """Requests queued per pool at most. When it is full, the newest request of the heaviest
    tenant (queued ÷ weight) of the lowest priority is shed (503 `flow_shed`) to make room —
    or the newcomer, when it is that tenant or of a lower priority. Example: `max_queued: 200`."""
    max_queued_per_tenant: int = Field(100, ge=0, le=1_000_000)
    """Requests one tenant may have queued per pool; past it the tenant's new requests get
    429 `flow_tenant_queue_full`: its own backlog, not the pool, is the reason.
    Example: `max_queued_per_tenant: 20`."""
    min_queued_priority: int | None = Field(None, ge=-1000, le=1000)
    """Requests of tenants whose `priority` is below this are never queued: while the pool is
    saturated they are refused at once (503 `flow_shed`), as batch work that should go
    elsewhere rather than wait. Unset: every priority may queue.
    Example: `min_queued_priority: 0`."""
    headroom: float = Field(0.5, ge=0, lt=1)
    """Share of a pool's slots that a tenant already past its fair share may not borrow. A
    tenant's fair share is the estimated work (tokens) of every request in flight × its weight
    ÷ the weights of the tenants with requests running or queued. The headroom stays free for
    tenants within their share, so a lighter tenant's next request starts at once instead of
    waiting for one of a flood's to end. 0: a flood may fill every idle slot.
    Example: `headroom: 0.2`."""
    expected_output_tokens: int = Field(256, ge=1, le=1_000_000)
    """Tokens a request without `max_tokens` (or `max_completion_tokens`) is assumed to
    generate when its cost is estimated. A request's cost, what fair shares and fair queuing
    count, is the new tokens of its last turn plus its output tokens (docs/routing.md, "Flow
    control"). Example: `expected_output_tokens: 512`."""
    single_use_kv_weight: float = Field(1.0, ge=1, le=100)
    """How many times its estimated work a request is charged when its tenant never reads back
    the KV cache it writes: each tenant's recent requests compare the history they re-send
    (earlier turns) with the new tokens they add, and a request costs `1 + (this - 1) × (1 -
    that ratio, at most 1)` times its work. A chat re-sends its conversation every turn and
    pays the plain cost; a flood of single turns, whose new tokens only push other tenants'
    cached conversations out of the backends' prefix caches, pays this many times it, as if
    its weight were divided by it. 1: every token costs the same. In the simulator 3 took a
    chat neighbour's TTFT p99 under a flood at equal weights from 2.13x its own to 1.31x
    (1.24x to 1.02x with the earlier fixed-weight `prefix-load`; `single_use_backends` did
    more; docs/routing.md, "The flood experiment", which also says what is left).
    Example: `single_use_kv_weight: 3`."""
    single_use_backends: float | None = Field(None, gt=0, lt=1)
    """Share of a pool's deployments (of those up, rounded up, at least one) that a single-use
    tenant's requests are routed to — a tenant re-reading less than half the KV it writes,
    measured as for `single_use_kv_weight` — while another tenant that does re-read has
    requests running or queued in the pool; those other tenants are then routed to the rest
    of the pool. Each tenant's deployments are chosen by a stable hash of its name, so every
    replica picks the same ones; the routing strategy orders within the set and the pool's
    other deployments follow as fallbacks only. The flood's KV writes and prefills then land
    on its few backends instead of evicting and slowing the other tenants' conversations
    everywhere. A tenant alone, or tenants that all never re-read, keep every deployment; a
    new chat tenant counts as single-use for its first turns, until it has re-read some of its
    history. The price: the single-use tenant gets about what its backends serve, and the
    others lose them. Unset: nobody is confined. In the simulator `0.125` (one of 8 backends)
    with `single_use_kv_weight: 1` held a chat neighbour's TTFT p99 under a flood to 1.06x its
    own alone on the held-out seeds (1.31x with `single_use_kv_weight: 3` alone; 1.21x before
    `prefix-load`'s hot prefixes), the flood served at 8.3 req/s; `0.25` did worse
    (docs/routing.md, "The flood experiment").
    Example: `single_use_backends: 0.125`."""
    recheck_s: float = Field(0.25, gt=0, le=60)
    """While requests wait on a pool held by its scraped saturation, how often the gateway
    re-reads the signals to see whether the hold is over. Example: `recheck_s: 0.5`."""
