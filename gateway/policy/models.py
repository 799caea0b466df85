"""The policy file, as pydantic models. Every field has a docstring: it feeds docs/policy.md.

Models are frozen and forbid unknown keys, so a typo fails `gateway policy check` with its YAML
path instead of silently changing routing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from gateway.policy.alerts import Alerts
from gateway.policy.cache import CacheRule, CacheSettings
from gateway.policy.compact import Shared
from gateway.policy.flow import FlowControl
from gateway.policy.guards import Guard
from gateway.policy.rollouts import Rollout
from gateway.policy.spill import SessionHeader, Spill
from gateway.policy.tenants import TenantConfig


class Strict(Shared):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Timeouts(Strict):
    connect: float = Field(5.0, gt=0, le=600)
    """Seconds to open a TCP (and TLS) connection to the upstream."""
    first_byte: float = Field(60.0, gt=0, le=3600)
    """Seconds from sending the request to the first byte of the response (time to first token
    for streams). Past it the attempt counts as a retryable timeout and the next deployment is
    tried — nothing has reached the client yet."""
    total: float = Field(600.0, gt=0, le=86400)
    """Seconds for the whole upstream exchange, stream included."""

    @model_validator(mode="after")
    def _ordered(self) -> Timeouts:
        if self.first_byte > self.total:
            raise ValueError(
                f"first_byte ({self.first_byte}) must not exceed total ({self.total}): "
                "lower first_byte or raise total"
            )
        return self


class ProviderBase(Strict):
    base_url: str = ""
    """Root URL of the upstream API, e.g. `https://api.openai.com/v1` or `http://gpu-a:8000/v1`."""
    api_key: str | None = None
    """Upstream API key. Write it as `${ENV_VAR}` (or `${ENV_VAR:-}` for an optional key):
    keys never live in the policy file itself, and never appear in responses or logs."""
    api_key_file: str | None = None
    """Path of a file holding the upstream key (a mounted Kubernetes secret); read at load."""
    optional: bool = False
    """When true and the provider has no API key (its variable unset or empty), the provider and
    every deployment on it are dropped at load instead of failing: the default policy uses this
    to serve external providers only where their key is set."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP headers sent with every upstream request (organisation ids, gateway tags)."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    """Default timeouts for this provider's deployments."""
    max_connections: int = Field(256, ge=1, le=100_000)
    """Pooled keep-alive connections to this provider (one pool per provider)."""
    drain_on_disconnect: bool = False
    """When a streaming client disconnects: false cancels the upstream request (frees a
    self-hosted GPU); true keeps reading to the end so the provider's exact usage is recorded —
    external providers bill the full generation either way."""


class OpenAIProvider(ProviderBase):
    kind: Literal["openai", "openai-compatible", "vllm"]
    """`openai` (api.openai.com), `openai-compatible` (Groq, Together, Mistral, DeepSeek,
    Fireworks, OpenRouter, Ollama, TGI's Messages API…), or `vllm` (a vLLM server: the gateway
    also asks it for `continuous_usage_stats` and scrapes its `/metrics`)."""
    supports_stream_usage: bool = True
    """Whether the upstream understands `stream_options.include_usage`. When false the gateway
    does not send it and counts stream usage with its tokenizer (source `estimated`)."""
    metrics_url: str | None = None
    """Prometheus endpoint with vLLM metric names; defaults to `<base_url without /v1>/metrics`
    for `kind: vllm`."""
    supports_responses: bool | None = None
    """Whether the upstream serves the Responses API (`/v1/responses`), which then gets
    Responses requests passed through; unset: true for `kind: openai`, false for the others
    (vLLM ≥ 0.10 serves it: set true), which get them translated to chat."""


class AzureProvider(ProviderBase):
    kind: Literal["azure"]
    api_version: str = "2024-10-21"
    """Azure OpenAI `api-version` query parameter."""
    auth: Literal["api-key", "entra"] = "api-key"
    """`api-key`: the key goes in the `api-key` header; `entra`: it is a Microsoft Entra bearer
    token (from the environment) sent as `Authorization: Bearer`."""
    supports_responses: bool | None = None
    """Whether the resource serves the Responses API (`/openai/v1/responses`, or
    `/openai/responses` with a dated `api_version`); unset: true when `api_version` is `v1`,
    `preview` or a dated preview from `2025-03-01-preview` on (the versions that serve it),
    false otherwise, and the gateway then translates Responses requests to chat."""


class AnthropicProvider(ProviderBase):
    kind: Literal["anthropic"]
    anthropic_version: str = "2023-06-01"
    """Value of the `anthropic-version` header."""
    default_max_tokens: int = Field(4096, ge=1)
    """`max_tokens` is required by Anthropic; used when the client sends none."""


class GeminiProvider(ProviderBase):
    kind: Literal["gemini"]


class LocalProvider(ProviderBase):
    kind: Literal["local"]
    """`gateway serve` starts and supervises a `local-backend` process for this provider."""
    model: str = "tiny-random"
    """Model directory or Hugging Face id served by the local backend."""
    embedding_model: str | None = None
    """Sentence-embedding model served alongside (`all-MiniLM-L6-v2` ships with the package)."""
    engine: Literal["auto", "vllm", "torch"] = "auto"
    """`auto` picks vLLM when it and a GPU are present, torch otherwise."""
    port: int = Field(0, ge=0, le=65535)
    """Port for the backend; 0 picks a free one."""
    start_timeout_s: float = Field(600.0, gt=0, le=86400)
    """Seconds `gateway serve` waits at start for this backend to answer `/health` before it
    gives up and exits (code 3). Loading a large model into vLLM can take several minutes."""
    args: list[str] = Field(default_factory=list)
    """Extra arguments passed through to `local-backend serve` (and on to vLLM)."""


ProviderConfig = Annotated[
    OpenAIProvider | AzureProvider | AnthropicProvider | GeminiProvider | LocalProvider,
    Field(discriminator="kind"),
]


class Price(Strict):
    """USD per million tokens, for each usage bucket."""

    input: Decimal = Field(Decimal(0), ge=0)
    """Uncached input tokens."""
    cache_read: Decimal | None = Field(None, ge=0)
    """Cached input tokens read; defaults to `input`."""
    cache_write: Decimal | None = Field(None, ge=0)
    """Input tokens written to the provider's cache; defaults to `input`."""
    output: Decimal = Field(Decimal(0), ge=0)
    """Output tokens."""
    reasoning: Decimal | None = Field(None, ge=0)
    """Reasoning tokens; defaults to `output`."""
    effective_from: str | None = None
    """ISO date (`2026-01-01`) from which this price applies; a list of prices on one deployment
    is effective-dated, the latest one not after the request's date wins."""


class Deployment(Strict):
    provider: str
    """Name of an entry under `providers`."""
    model: str
    """The model name the upstream knows (sent in the upstream request's `model`)."""
    weight: float = Field(1.0, ge=0)
    """Share of traffic under `weighted` routing; 0 disables the deployment (drain, canary)."""
    name: str | None = None
    """Name in headers, metrics and the ledger; defaults to `provider/model`."""
    timeouts: Timeouts | None = None
    """Overrides the provider's timeouts for this deployment."""
    pricing: list[Price] = Field(default_factory=list)
    """Prices (effective-dated) for cost accounting. Empty: cost 0."""
    gpu_cost_per_hour: Decimal | None = Field(None, ge=0)
    """Self-hosted alternative to `pricing`: USD per hour of the backend while it is in force
    (in the loaded policy with weight > 0), as the gateways record it; allocated to tenants in
    proportion to the tokens they used on it over the reporting period (docs/accounting.md)."""
    gpu_since: datetime | None = None
    """With `gpu_cost_per_hour`: when the GPU was provisioned, if before any gateway loaded
    this deployment (`2026-03-01T08:00:00Z`; UTC when it has no offset). Billing then starts
    here instead of when a gateway first recorded the deployment."""

    @model_validator(mode="after")
    def _gpu_since_needs_a_rate(self) -> Deployment:
        if self.gpu_since is not None and self.gpu_cost_per_hour is None:
            raise ValueError(
                f"gpu_since ({self.gpu_since.isoformat()}) is set but gpu_cost_per_hour is "
                "not: add gpu_cost_per_hour or remove gpu_since"
            )
        return self

    @property
    def id(self) -> str:
        return self.name or f"{self.provider}/{self.model}"


Strategy = Literal["weighted", "least-busy", "latency", "prefix-affinity", "prefix-load", "cost"]
SessionRule = Literal["auto", "header", "user", "previous_response_id", "none"]
# A name or `{header: NAME}`, told apart by shape so a bad value gets one error, not one per form.
SessionKey = Annotated[
    Annotated[SessionRule, Tag("name")] | Annotated[SessionHeader, Tag("header")],
    Discriminator(lambda v: "name" if isinstance(v, str) else "header"),
]


class ModelRoute(Strict):
    deployments: list[Deployment] = Field(min_length=1)
    """Where the model is served. At least one."""
    strategy: Strategy = "weighted"
    """How a deployment is chosen: `weighted`, `least-busy`, `latency`, `prefix-affinity`,
    `prefix-load` or `cost` (docs/routing.md). Unset: `prefix-load` when every deployment is
    on a `vllm` or `local` provider, else `weighted`. Example: `strategy: least-busy`."""
    session_key: SessionKey = "auto"
    """What pins a conversation to one deployment for `prefix-affinity` and `prefix-load`:
    `header` (the `x-session-id` request header), `{header: NAME}` (another request header),
    `user` (the request's `user` field), `previous_response_id` (the Responses API
    conversation it continues), `none` (the prompt alone decides), or `auto`: the first of
    `x-session-id`, `user` and `previous_response_id` that the request has (docs/routing.md,
    "Session affinity"). Example: `session_key: {header: x-conversation-id}`."""
    spill: Spill | None = None
    """Cost-aware spill for a model served both self-hosted and externally: self-hosted
    first while its predicted TTFT stays under `ttft_ms`, external beyond; each spill is
    recorded in the ledger with its reason (docs/routing.md, "Cost-aware spill"). Example:
    `spill: {ttft_ms: 800, to: [gpt-4o-mini]}`."""
    fallbacks: list[str] = Field(default_factory=list)
    """Other public model names tried, in order, when every deployment of this one failed with
    a retryable error (connect, timeout, 429, 5xx)."""
    context_fallbacks: list[str] = Field(default_factory=list)
    """Models tried when the prompt is too long for this one (context-length error)."""
    max_attempts: int | None = Field(None, ge=1, le=20)
    """Upstream attempts for one request across deployments and fallbacks; defaults to
    `router.max_attempts`."""
    type: Literal["chat", "embedding", "completion", "rerank", "score"] = "chat"
    """What the model serves; informs `/v1/models` and validation. `rerank` and `score`: a
    cross-encoder served through `/v1/rerank` and `/v1/score` (docs/providers.md)."""
    description: str | None = None
    """Free text shown in `/v1/models`."""
    context_length: int | None = Field(None, ge=1, le=100_000_000)
    """The model's context window in tokens, shown in `/v1/models` for applications that size
    prompts by it; the gateway does not enforce it."""
    rollout: Rollout | None = None
    """An SLO-gated canary of a new version of this model: steps, gates, automatic promotion
    and rollback (docs/rollouts.md)."""
    cache: CacheRule | None = None
    """This model's response-cache rule, over the top-level `cache:` (docs/stages.md).
    Example: `{enabled: true, ttl_s: 3600}`."""


class CircuitBreaker(Strict):
    failures: int = Field(3, ge=1)
    """Consecutive retryable failures that put a deployment in cooldown."""
    cooldown_s: float = Field(30.0, gt=0, le=3600)
    """Seconds a deployment is skipped after tripping (or the upstream's `Retry-After`, if
    longer, capped at `max_cooldown_s`). Afterwards one probe request is let through."""
    max_cooldown_s: float = Field(300.0, gt=0)
    """Upper bound for a cooldown taken from `Retry-After`."""
    min_tenants: int = Field(2, ge=1, le=100)
    """Distinct tenants whose requests must have failed before failures a request itself may
    cause (an upstream 5xx, a timeout) open the breaker — so one tenant sending input that
    makes a backend fail cannot take the deployment away from every tenant. Capped at the
    number of tenants in the policy (open mode: 1). Failures no request can cause (connection
    refused, a 429/503 with `Retry-After`, the upstream refusing our key) count whoever sent
    them (docs/routing.md, "Circuit breaker")."""
    window_s: float = Field(30.0, gt=0, le=3600)
    """Window of the failure-ratio rule: a deployment also opens when, over the last
    `window_s`, at least `min_requests` attempts ended and `failure_ratio` of them failed
    (from at least `min_tenants` tenants) — intermittent failures never make `failures`
    in a row."""
    min_requests: int = Field(20, ge=1)
    """Attempts within `window_s` before the failure-ratio rule applies."""
    failure_ratio: float = Field(0.5, gt=0, le=1)
    """Share of failed attempts within `window_s` that opens the breaker."""


class Router(Strict):
    max_attempts: int = Field(3, ge=1, le=20)
    """Default retry budget: upstream attempts for one request, all deployments and fallbacks
    included."""
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    """When a failing deployment is taken out of rotation."""
    health_check_interval_s: float = Field(5.0, gt=0)
    """Seconds between active `/health` probes and `/metrics` scrapes of self-hosted endpoints."""
    metrics_stale_s: float = Field(15.0, gt=0)
    """A scrape older than this is ignored; strategies fall back to the gateway's own counts."""
    seed: int | None = None
    """Seed for the weighted strategy's randomness (tests, simulations)."""


class Server(Strict):
    host: str = "127.0.0.1"
    """Address `gateway serve` binds when `--host` is not given."""
    port: int = Field(4000, ge=1, le=65535)
    """Port `gateway serve` listens on when `--port` is not given."""
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """Request bodies larger than this get 413."""
    header_timeout_s: float = Field(60.0, gt=0, le=3600)
    """Seconds a client has to send a request's complete headers, counted from its connection
    (or the request's first byte on a kept-alive connection); past it the gateway answers 408
    and closes. Stops slow-header ("slowloris") clients holding connections. Read at start."""
    body_timeout_s: float = Field(60.0, gt=0, le=3600)
    """Seconds allowed between two reads of a request body, as nginx's
    `client_body_timeout`; past it the gateway answers 408 and closes. Read at start."""
    max_connections: int = Field(2048, ge=1, le=1_000_000)
    """Open client connections per replica (idle keep-alive ones and ones still sending
    included); a request on a connection past it gets 503 with `retry-after`. Keep it under the
    process's open-file limit (`ulimit -n`) less the upstream pools. Read at start."""
    keep_alive_s: int = Field(5, ge=1, le=3600)
    """Seconds an idle client connection is kept open for its next request. Behind a load
    balancer, set it above the balancer's idle timeout (AWS ALB: 60) so the gateway never closes
    a connection the balancer is about to reuse. Read at start."""
    admin_key: str | None = None
    """Key for `/admin/*` (write it as `${GATEWAY_ADMIN_KEY}`); unset disables the admin API."""


class State(Strict):
    redis_url: str | None = None
    """`redis://…` shares limits, budgets, circuit state and key revocations across replicas;
    unset keeps them in process memory (one replica)."""
    key_prefix: str = "gw:"
    """Prefix of every Redis key (isolate environments sharing one Redis)."""
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"
    """When Redis cannot be reached: admit requests unlimited (`fail_open`) or refuse them with
    503 (`fail_closed`). Either way it is logged and counted in metrics."""


class Ledger(Strict):
    url: str = "sqlite:///var/gateway/ledger.db"
    """`sqlite:///path` (WAL) or `postgresql://user@host:port/db`."""
    spill_path: str = "var/gateway/spill.jsonl"
    """Append-only file records go to while the database is unreachable; replayed on return."""
    batch_size: int = Field(500, ge=1, le=100_000)
    """Records written per database transaction at most."""
    flush_interval_s: float = Field(0.005, gt=0, le=60)
    """Longest a record waits in memory before it is written. The batch is written on the
    gateway's own core, so the shorter the interval, the shorter each burst: at 0.2 s a c=1
    load's batch was milliseconds of CPU in one go; 20 ms cut the c=1 p99 by a third (3.7 to
    2.5 ms) and 5 ms by a further tenth (1.78 to 1.59 ms), each at the same throughput and CPU
    per request (docs/benchmarks.md). Example: `flush_interval_s: 0.005`."""
    schema_name: str | None = Field(None, alias="schema")
    """PostgreSQL schema for the ledger tables (default `public`)."""
    journal: bool = True
    """Write every request's record to a local journal before its response completes, so a
    killed process (`kill -9`, OOM) loses nothing it answered; start-up ships what a dead
    process left (docs/accounting.md, "Durability"). Turn off only for throwaway setups."""
    journal_dir: str | None = None
    """Folder of the journal's segment files; defaults to `journal/` beside `spill_path`.
    Processes may share it (each locks its own segments)."""
    journal_fsync_s: float = Field(1.0, gt=0, le=60)
    """Seconds between fsyncs of the journal: the most a machine crash (power, kernel) can
    lose. A process crash loses nothing either way."""

    @property
    def journal_folder(self) -> str:
        return self.journal_dir or str(Path(self.spill_path).parent / "journal")


class Accounting(Strict):
    default_max_tokens: int = Field(1024, ge=1)
    """Completion tokens reserved at admission when the request gives no `max_tokens`."""
    estimate_missing_usage: bool = True
    """Count tokens with the gateway's tokenizer when a provider reports none (source
    `estimated`). When on, the tokenizer (about 140 MB resident) loads at start-up; when off,
    only a token-counting request loads it."""


class Responses(Strict):
    store: bool = True
    """Store Responses API responses (`POST /v1/responses`) so `previous_response_id`,
    `GET /v1/responses/{id}` and its input items work, on every backend (docs/responses.md).
    False stores nothing, whatever a request asks (its `store: true` is then answered with
    `store: false`). A request's own `store: false` is always honoured."""
    retention_days: int = Field(30, ge=1, le=3650)
    """Days a stored response is kept (OpenAI keeps them 30 days); expired ones are gone at
    once for every read and deleted in the background."""
    max_turns: int = Field(100, ge=1, le=10_000)
    """Most earlier responses a `previous_response_id` chain is rebuilt from; older turns
    are left out of the conversation."""


class Observability(Strict):
    metrics: bool = True
    """Serve Prometheus metrics at `/metrics`."""
    tracing: bool = False
    """Emit OpenTelemetry spans (GenAI semantic conventions); exporter from OTEL_* variables."""
    log_requests: bool = True
    """One structured log line per request (never with keys or bodies)."""
    otlp_metrics: bool = False
    """Also export the OpenTelemetry GenAI metrics (`gen_ai.client.token.usage`,
    `gen_ai.server.request.duration`, …) over OTLP, exporter and interval from OTEL_*
    variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_METRIC_EXPORT_INTERVAL`). They are on
    `/metrics` in Prometheus form either way. Example: `otlp_metrics: true`."""
    tenant_label_limit: int = Field(100, ge=1, le=100_000)
    """Most tenants that get their own label value in per-tenant metric series
    (`gateway_tokens_total`, `gateway_cost_usd_total`); tenants seen after that are summed
    under `tenant="_other"`, so thousands of tenants cannot blow up the series count. The
    ledger and reports are exact whatever this is. Example: `tenant_label_limit: 500`."""


class Console(Strict):
    enabled: bool = True
    """Serve the web console at `/ui` (docs/console.md) while `server.admin_key` is set;
    false turns it off (every `/ui` path is then a 404). Example: `enabled: false`."""
    session_ttl_s: int = Field(8 * 3600, ge=60, le=7 * 86400)
    """Seconds a console sign-in lasts; after it the browser must sign in again with its key.
    Example: `session_ttl_s: 3600`."""


class Policy(Strict):
    version: Literal[1] = 1
    """Schema version of this file."""
    server: Server = Field(default_factory=Server)
    """Listening address and request limits."""
    state: State = Field(default_factory=State)
    """Where shared counters live."""
    ledger: Ledger = Field(default_factory=Ledger)
    """Where usage records are written."""
    accounting: Accounting = Field(default_factory=Accounting)
    """Token reservation and estimation."""
    router: Router = Field(default_factory=Router)
    """Retries, circuit breaker, health checks."""
    observability: Observability = Field(default_factory=Observability)
    """Metrics, traces, logs."""
    responses: Responses = Field(default_factory=Responses)
    """Stored responses of the Responses API: whether, and for how long."""
    console: Console = Field(default_factory=Console)
    """The web console at `/ui`: on or off, how long a sign-in lasts."""
    alerts: Alerts = Field(default_factory=Alerts)
    """Webhooks told of budget thresholds, exhausted budgets, open circuits and rollouts
    (docs/alerts.md)."""
    cache: CacheSettings | None = None
    """The exact response cache: its store and default rule; absent, nothing is cached unless
    a model says `cache: {enabled: true}` (docs/stages.md). Example: `{backend: redis}`."""
    flow_control: FlowControl | None = None
    """Fair per-tenant queues in front of saturated self-hosted pools, by each tenant's
    `priority` and `weight` (docs/routing.md, "Flow control"); absent, nothing is queued.
    Example: `{max_in_flight_per_deployment: 32, queue_timeout_s: 20}`."""
    guards: dict[str, Guard] = Field(default_factory=dict)
    """Named safety checks on prompts and replies, run in this order (docs/guards.md).
    Example: `{no-cards: {detector: {kind: pii, types: [card]}, applies_to: {external_only:
    true}}}`."""
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    """Upstreams by name."""
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    """Public model names clients send, each routed to deployments."""
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    """Who may call the gateway. Empty: open mode, every caller is tenant `default` (the
    embedded default for a laptop; never for a shared deployment)."""

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelRoute]) -> dict[str, ModelRoute]:
        for name in v:
            if not name or name != name.strip():
                raise ValueError(f"model name {name!r} must be non-empty with no outer spaces")
        return v
