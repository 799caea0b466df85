"""Cost-aware spill (`models.*.spill`): self-hosted first while the predicted time to first token
stays under `ttft_ms`; external beyond, when the price allows. A plan step, no I/O.

- **Predicted TTFT** of the self-hosted deployment the model's strategy would pick:
  `wait = requests ahead × seconds per request / batch slots in use`, where requests ahead is
  the backend's scraped queue (`waiting`) plus this step's own picks against the same signals
  snapshot (a burst planned together would otherwise all see the same short queue), seconds per
  request is the gateway's smoothed latency there (`spill.request_s` until it has one), and
  the slots are the backend's `running`. vLLM's measured queue time over its last scrape
  interval is a floor while a queue is reported, and a KV cache past `KV_FULL` adds one
  request's turn (admission waits on blocks). This gateway's live in-flight count beyond what
  the deployment runs at once is a queue too — what it runs while it queues, else the most it
  has been seen running once it was seen queueing: the scrape is seconds old, and the
  collector's snapshot changes with every request, so picks counted against one snapshot miss
  a stream of single requests (the simulator's spill experiment herded onto deployments last
  scraped quiet without it).
  Without a fresh scrape, the gateway's own smoothed TTFT there stands in. Prefill itself is
  not predicted: the rule is about queueing.
- **Price of each side** for this request: on an external deployment, its per-token price
  (effective today) × the estimated prompt and completion; on the GPU, its share of the
  GPU-hour at current utilisation, `gpu_cost_per_hour × seconds per request / running`.
  `max_price_ratio` refuses a spill dearer than that many times the GPU's share.
- The first self-hosted deployment in the strategy's order predicted under the threshold is
  put first; only when none is does the request spill.
- Every decision taken over the threshold is returned as a reason (`spill: …` or `held: …`):
  the proxy stores it in the request's ledger record (`route_reason`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.accounting.estimate import estimate_prompt_tokens
from gateway.call import Call
from gateway.policy.models import Deployment, LocalProvider, OpenAIProvider, Policy
from gateway.policy.spill import Spill as SpillRule
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals, Strategy
from gateway.routing.strategies.cost import DEFAULT_COMPLETION_TOKENS, Cheapest, price_on
from gateway.routing.strategies.pool import routable

KV_FULL = 0.95
"""KV-cache use from which a new request waits for blocks as well as for a batch slot."""
MAX_UNSEEN = 256
"""Own picks counted against one snapshot at most (a router without live signals hands the
same empty snapshot to every call)."""


def self_hosted_ids(policy: Policy, deployments: Sequence[Deployment]) -> frozenset[str]:
    """Deployments on a `vllm` or `local` provider, or paid by the GPU-hour."""
    out = set()
    for d in deployments:
        prov = policy.providers.get(d.provider)
        if (d.gpu_cost_per_hour is not None or isinstance(prov, LocalProvider)
                or (isinstance(prov, OpenAIProvider) and prov.kind == "vllm")):
            out.add(d.id)
    return frozenset(out)


def _seconds_per_request(load: EndpointLoad, request_s: float) -> float:
    return load.latency_ewma_s if load.latency_ewma_s else request_s


def predicted_ttft_s(load: EndpointLoad, picked: int, request_s: float,
                     batch: int | None = None) -> float:
    """Seconds a new request would wait for its first token on this deployment (module doc);
    `batch`: the most it has been seen running since it was first seen queueing (None: never
    seen queueing)."""
    if load.waiting is None:  # no fresh scrape: what this gateway measured there lately
        return load.ttft_ewma_s or 0.0
    per = _seconds_per_request(load, request_s)
    slots = max(1, load.running or 0)
    # A free slot would have taken the queue's head: each one ahead waits for a turn.
    ahead = load.waiting + picked if load.waiting > 0 else 0
    # This gateway's live count beyond what the deployment runs at once is queued too: what
    # it ran while it queued (the batch, or as many as its KV cache holds), else the most it
    # has been seen running.
    full = load.running if load.waiting > 0 else batch
    if full:
        ahead = max(ahead, load.in_flight - full)
        slots = max(slots, full)
    wait = 0.0
    if ahead > 0:
        wait = ahead * per / slots
    if load.waiting > 0:
        wait = max(wait, load.queue_time_s or 0.0)
    if load.kv_cache_usage is not None and load.kv_cache_usage >= KV_FULL:
        wait += per / slots
    return wait


def gpu_share_usd(d: Deployment, load: EndpointLoad, request_s: float) -> float | None:
    """This request's share of the deployment's GPU-hour at current utilisation; None when
    it has no `gpu_cost_per_hour`."""
    if d.gpu_cost_per_hour is None:
        return None
    per = _seconds_per_request(load, request_s)
    return float(d.gpu_cost_per_hour) / 3600.0 * per / max(1, load.running or 0)


def _tokens(call: Call) -> tuple[int, int]:
    """(prompt, completion) tokens expected: the admission estimate and the completion cap."""
    prompt = (call.prompt_estimate if call.prompt_estimate is not None
              else estimate_prompt_tokens(call.body))
    for key in ("max_completion_tokens", "max_tokens"):
        v = call.body.get(key)
        if isinstance(v, int) and v > 0:
            return prompt, v
    return prompt, DEFAULT_COMPLETION_TOKENS


def external_usd(d: Deployment, prompt: int, completion: int) -> float:
    """Expected price of the request on a priced deployment (0 when it has no price)."""
    p = price_on(d.pricing, datetime.now(UTC).date())
    if p is None:
        return 0.0
    return (prompt * float(p.input) + completion * float(p.output)) / 1e6


def _per_m(usd: float, tokens: int) -> str:
    return f"${usd / max(1, tokens) * 1e6:.2f}"


class Spill:
    """Orders one model's candidates (and its `spill.to` models') self-hosted or external
    first; built once per policy for each model with a `spill:` rule."""

    def __init__(self, rule: SpillRule, local_ids: frozenset[str], local: Strategy,
                 seed: int | None = None) -> None:
        self.rule = rule
        self._local_ids = local_ids
        self._local = local
        self._external = Cheapest(seed)
        self._snapshot: Signals | None = None
        self._picked: dict[str, int] = {}  # own self-hosted picks made against `_snapshot`
        self._picked_total = 0
        # The most seen running, per deployment, once it was seen queueing: before that the
        # most it ran says nothing of its batch.
        self._batch: dict[str, int] = {}

    def _pick(self, signals: Signals, did: str) -> int:
        """Count a pick of `did` against `signals`; returns the picks before it."""
        if signals is not self._snapshot or self._picked_total >= MAX_UNSEEN:
            self._snapshot = signals
            self._picked.clear()
            self._picked_total = 0
        before = self._picked.get(did, 0)
        self._picked[did] = before + 1
        self._picked_total += 1
        return before

    def _unpick(self, did: str) -> None:
        self._picked[did] -= 1
        self._picked_total -= 1

    def order(self, candidates: Sequence[Target], extra: Sequence[Target], signals: Signals,
              call: Call, excluded: Sequence[str] = ()) -> tuple[list[Target], str | None]:
        """The attempt order and, when the prediction was over the threshold (or nothing
        self-hosted could serve), why it is what it is. ``extra``: the live deployments of the
        `spill.to` models the tenant may use; ``excluded``: those it may not."""
        local: list[Target] = []
        external: list[Target] = []
        local_ids = self._local_ids
        for t in candidates:  # `id` is a property chain: read once each
            if t.deployment.weight > 0:
                (local if t.id in local_ids else external).append(t)
        external += routable(extra)
        ext = self._external.order(external, signals, call) if len(external) > 1 else external
        if not local:
            return ext, ("spill: no self-hosted deployment is available" if ext else None)
        ordered = self._local.order(local, signals, call) if len(local) > 1 else local
        rule = self.rule
        # The first self-hosted deployment in strategy order predicted under the threshold
        # serves; past the strategy's own pick that trades its cached prefix for the SLO.
        batches = self._batch
        for i, t in enumerate(ordered):
            tid = t.id
            picked = self._picked.get(tid, 0) if signals is self._snapshot else 0
            load = signals.load(tid)
            batch = batches.get(tid)
            running = load.running
            if running and (load.waiting or batch is not None) and running > (batch or 0):
                batch = batches[tid] = running
            if predicted_ttft_s(load, picked, rule.request_s, batch) * 1000.0 <= rule.ttft_ms:
                self._pick(signals, tid)
                if i:
                    ordered = [t, *ordered[:i], *ordered[i + 1:]]
                return ordered + ext, None
        best = ordered[0]
        load = signals.load(best.id)
        ahead = self._pick(signals, best.id)
        ttft_ms = predicted_ttft_s(load, ahead, rule.request_s, batches.get(best.id)) * 1000.0
        over = f"predicted TTFT {ttft_ms:.0f} ms on {best.id} > {rule.ttft_ms:.0f} ms"
        if not ext:
            gone = f" ({', '.join(excluded)}: not this tenant's)" if excluded else ""
            return ordered, f"held: {over}; no external deployment{gone}"
        prompt, completion = _tokens(call)
        tokens = prompt + completion
        share = gpu_share_usd(best.deployment, load, rule.request_s)
        cheapest = ext[0]
        price = external_usd(cheapest.deployment, prompt, completion)
        side = f"{cheapest.id} {_per_m(price, tokens)}/M tokens"
        if share is not None:
            side += f" vs self-hosted {_per_m(share, tokens)}/M"
        ratio = rule.max_price_ratio
        if ratio is not None and share is not None and price > ratio * share:
            return ordered + ext, f"held: {over}; {side} is over {ratio:g}x"
        self._unpick(best.id)  # it goes elsewhere: no longer ahead in that queue
        return ext + ordered, f"spill: {over}; {side}"
