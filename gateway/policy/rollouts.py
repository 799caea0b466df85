"""`rollout:` on a model route: an SLO-gated canary the gateway carries out (docs/rollouts.md).

The baseline is the model's own deployments (less any the candidate names); the candidate is
some of those deployments, or another public model. Traffic moves through `steps`; at each
step every gate compares the candidate with the baseline over the step's window, and one
breach rolls the candidate back to weight 0 at once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RolloutCandidate(_Strict):
    """What is being rolled out: `deployments` of this model, or another `model`."""

    deployments: list[str] = Field(default_factory=list)
    """Ids (`name`, or `provider/model`) of entries in this model's `deployments` that make up
    the candidate; the others are the baseline. Example: `[vllm-b/llama-3.1-8b-v2]`."""
    model: str | None = None
    """Another public model whose deployments are the candidate (example: `llama-3.1-8b-v2`);
    the whole of this model's `deployments` is then the baseline."""

    @model_validator(mode="after")
    def _one(self) -> RolloutCandidate:
        if bool(self.deployments) == (self.model is not None):
            raise ValueError("name the candidate by `deployments` (ids of this model's "
                             "deployments) or by `model` (another model), exactly one of them")
        return self


class RolloutStep(_Strict):
    percent: float = Field(gt=0, le=100)
    """Share of the model's requests the candidate serves during this step (example: `5`)."""
    min_duration_s: float = Field(300.0, ge=0, le=30 * 86400)
    """The step lasts at least this long before the rollout may move on (example: `600`)."""
    min_requests: int = Field(200, ge=0, le=100_000_000)
    """And the candidate has served at least this many requests in it (example: `500`)."""


class RateGate(_Strict):
    """A share of requests (errors, replies cut by `length`): an absolute cap, a ratio to the
    baseline's share, or both."""

    max: float | None = Field(None, ge=0, le=1)
    """Breach when the candidate's share is significantly above this (example: `0.02`)."""
    max_ratio: float | None = Field(None, ge=1, le=1000)
    """Breach when the candidate's share is significantly above this multiple of the
    baseline's (example: `1.5`)."""

    @model_validator(mode="after")
    def _some(self) -> RateGate:
        if self.max is None and self.max_ratio is None:
            raise ValueError("give `max`, `max_ratio` or both (an empty gate checks nothing)")
        return self


class RatioGate(_Strict):
    max_ratio: float = Field(ge=1, le=1000)
    """Breach when the candidate's figure is significantly above this multiple of the
    baseline's (example: `1.2`: at most 20 % worse)."""


class RolloutGates(_Strict):
    """Each gate compares candidate with baseline over the step's window; unset gates are not
    checked."""

    error_rate: RateGate | None = None
    """Share of requests that failed (5xx, or an upstream failure on the arm). Example:
    `{max: 0.02, max_ratio: 2}`."""
    ttft_p95: RatioGate | None = None
    """95th percentile of time to first token (streams). Example: `{max_ratio: 1.2}`."""
    tpot_p50: RatioGate | None = None
    """Median time per output token after the first (streams). Example: `{max_ratio: 1.2}`."""
    tpot_p95: RatioGate | None = None
    """95th percentile of time per output token (streams). Example: `{max_ratio: 1.3}`."""
    latency_p95: RatioGate | None = None
    """95th percentile of end-to-end latency. Example: `{max_ratio: 1.2}`."""
    cost_per_request: RatioGate | None = None
    """Mean cost (USD) of a request. Example: `{max_ratio: 1.1}`."""
    length_share: RateGate | None = None
    """Share of replies cut by `finish_reason: length`. Example: `{max_ratio: 1.5}`."""


class RolloutShadow(_Strict):
    percent: float = Field(gt=0, le=100)
    """Share of the baseline's requests also sent to the candidate in the background; the
    candidate's reply is discarded (example: `10`)."""
    tenant: str
    """Tenant (from `tenants`) billed for shadow requests — a platform account, never the
    client's tenant (example: `platform`)."""


class Rollout(_Strict):
    candidate: RolloutCandidate
    """What is rolled out (docs/rollouts.md)."""
    steps: list[RolloutStep] = Field(min_length=1, max_length=50)
    """Traffic shares in increasing order; after the last one holds, the candidate is promoted
    (serves 100 %). Example: `[{percent: 1}, {percent: 5}, {percent: 25}, {percent: 50}]`."""
    gates: RolloutGates = Field(default_factory=RolloutGates)
    """What the candidate must not be worse at."""
    min_samples: int = Field(100, ge=10, le=10_000_000)
    """Samples each arm needs in a step before a gate may give a verdict (example: `200`)."""
    confidence: float = Field(0.999, ge=0.9, lt=1)
    """One-sided confidence of each gate's test: a breach is declared only when a difference
    this unlikely under "the candidate is within the gate" is seen (example: `0.999`). Gates
    are evaluated on every flush, so keep it high (docs/rollouts.md, "Statistics")."""
    sticky: str = "user"
    """`user` (the OpenAI `user` field, else the `x-session-id` header) or the name of a
    request header (example: `x-conversation-id`): requests with the same value stay on one
    arm for the rollout. Requests with none are split at random."""
    shadow: RolloutShadow | None = None
    """Mirror some baseline requests to the candidate, billed to a platform tenant."""
    id: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    """Name of this rollout's shared state (example: `llama-v2-2026-03`); defaults to a hash
    of the model, candidate and steps, so changing them starts a new rollout."""
    @model_validator(mode="after")
    def _increasing(self) -> Rollout:
        pcts = [s.percent for s in self.steps]
        for i in range(1, len(pcts)):
            if pcts[i] <= pcts[i - 1]:
                raise ValueError(f"steps must increase: step {i} has percent {pcts[i]:g}, not "
                                 f"above step {i - 1}'s {pcts[i - 1]:g}")
        return self
