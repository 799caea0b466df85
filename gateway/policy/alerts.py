"""The `alerts:` section: webhooks that tell people about budgets and failing backends.

Secrets never live in the policy file: a webhook's HMAC `secret` is written as `${ENV_VAR}` or
read from `secret_file` (a mounted secret); `alert_secret_issues` enforces both at load, before
the schema sees the data. The value is a `SecretStr`, so dumping the policy (the console,
`repr`, a log line) prints `**********`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from gateway.policy.issues import Loc, PolicyIssue, issue

EventType = Literal["budget_threshold", "budget_exhausted", "circuit_open", "rollout"]
EVENT_TYPES: tuple[EventType, ...] = ("budget_threshold", "budget_exhausted", "circuit_open",
                                      "rollout")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Webhook(_Strict):
    name: str = Field(min_length=1, max_length=100)
    """A label for this webhook, unique in the list: it names the webhook in the delivery log
    and in logs (the URL is shown only by its host). Example: `name: finance-slack`."""
    url: str
    """Where events are POSTed (`http://` or `https://`). A Slack incoming-webhook URL is itself
    a secret: write it as `${SLACK_WEBHOOK_URL}`. Example: `url: https://hooks.example.com/gw`."""
    kind: Literal["json", "slack"] = "json"
    """`json`: the gateway's event envelope (docs/alerts.md); `slack`: a Slack-compatible
    `{"text": …}` message (Slack, Mattermost, Rocket.Chat incoming webhooks).
    Example: `kind: slack`."""
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1)
    """Event types sent to this webhook: `budget_threshold` (a tenant's spend crossed one of its
    `budget.alerts` fractions), `budget_exhausted` (the first request of a budget period
    refused with 402), `circuit_open` (a deployment's circuit breaker opened), `rollout`
    (rollout transitions). Example: `events: [budget_threshold, budget_exhausted]`."""
    tenants: list[str] | None = None
    """Only events about these tenants (budget events); events about no tenant
    (`circuit_open`, `rollout`) are always sent. Unset: every tenant.
    Example: `tenants: [acme]`."""
    secret: SecretStr | None = None
    """HMAC-SHA256 key signing each delivery (`X-Gateway-Signature`, docs/alerts.md). Write it
    as `${ENV_VAR}`: an inline secret is refused. Required for `kind: json`.
    Example: `secret: ${ALERTS_WEBHOOK_SECRET}`."""
    secret_file: str | None = None
    """Path of a file holding the secret instead (a mounted Kubernetes secret); read at load,
    relative to the policy file. Example: `secret_file: /run/secrets/alerts-hmac`."""
    timeout_s: float = Field(10.0, gt=0, le=120)
    """Seconds one delivery attempt may take (connect to last byte of the reply); past it the
    attempt failed and is retried. Example: `timeout_s: 5`."""

    @field_serializer("url", when_used="json")
    def _url_shown(self, v: str) -> str:
        # A policy shown (the console's policy page, its diff) names the host only: the path
        # of a Slack or Teams webhook URL is the credential.
        parts = urlsplit(v)
        return f"{parts.scheme}://{self.host}/***" if parts.path.strip("/") or parts.query \
            else f"{parts.scheme}://{self.host}"

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host "
                             "(e.g. https://hooks.example.com/gateway)")
        return v

    @field_validator("secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # `${VAR:-}` with VAR unset leaves "": no key, not an empty key.
        return None if v == "" else v

    @model_validator(mode="after")
    def _signed_json(self) -> Webhook:
        if self.kind == "json" and self.secret is None:
            raise ValueError(f"webhook {self.name!r} (kind json) needs a secret to sign its "
                             "deliveries: set secret: ${ENV_VAR} or secret_file")
        return self

    @property
    def host(self) -> str:
        """The URL's host (and port): what logs and the delivery log show of it."""
        parts = urlsplit(self.url)
        return parts.netloc.rpartition("@")[2]  # never credentials in user:pass@host


class Alerts(_Strict):
    webhooks: list[Webhook] = Field(default_factory=list)
    """Where alerts go; empty: none are sent (they are still logged and counted in
    `gateway_budget_alerts_total`). Example: see docs/alerts.md."""
    max_attempts: int = Field(8, ge=1, le=100)
    """Attempts per delivery before it is given up (logged, `outcome="failed"`); a receiver
    that is down for a while gets the event when it comes back within the backoff.
    Example: `max_attempts: 5`."""
    backoff_initial_s: float = Field(1.0, gt=0, le=3600)
    """Wait before the first retry; each further retry waits twice as long (with jitter), up
    to `backoff_max_s`. Example: `backoff_initial_s: 2`."""
    backoff_max_s: float = Field(300.0, gt=0, le=86400)
    """The longest wait between two attempts. Example: `backoff_max_s: 600`."""
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    """Deliveries waiting or retrying at once, per replica; an event past it is dropped
    (logged, `outcome="dropped"`) rather than ever slow a request. Example: `queue_size: 5000`."""
    concurrency: int = Field(4, ge=1, le=64)
    """Deliveries in flight at once per replica (a hanging receiver holds one for at most its
    `timeout_s`); read at start, a reload keeps the running workers. Example: `concurrency: 8`."""
    log_size: int = Field(200, ge=1, le=100_000)
    """Deliveries shown by `GET /admin/alerts/deliveries` (the newest; kept in memory, and
    read back from the outbox table at start). Example: `log_size: 1000`."""
    outbox_lease_s: float = Field(30.0, ge=1, le=3600)
    """How long a replica's claim on its unsent deliveries holds without renewal (it renews
    every third of it). Deliveries of a replica killed outright are resumed — by another
    replica, or by itself restarted — this long after it died. Example: `outbox_lease_s: 10`."""

    @model_validator(mode="after")
    def _checks(self) -> Alerts:
        seen: dict[str, int] = {}
        for i, w in enumerate(self.webhooks):
            if w.name in seen:
                raise ValueError(f"webhooks[{i}].name {w.name!r} repeats "
                                 f"webhooks[{seen[w.name]}].name; names must be unique")
            seen[w.name] = i
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"backoff_initial_s ({self.backoff_initial_s:g}) must not exceed "
                             f"backoff_max_s ({self.backoff_max_s:g})")
        return self


def alert_secret_issues(raw: Mapping[str, Any], data: dict[str, Any], file: str,
                        lines: Mapping[Loc, int]) -> list[PolicyIssue]:
    """Refuse inline webhook secrets (judged on `raw`, before `${ENV}` interpolation) and read
    each `secret_file` into `data` (interpolated). A load stage: see policy/load.py."""
    # Read before any `secret` is filled in below: `data` may share a hook with `raw` (the
    # interpolation copies only what it changes), or two hooks may be one YAML alias.
    raw_secrets = [h.get("secret") for h in _webhooks(raw)]
    hooks = _webhooks(data)
    out: list[PolicyIssue] = []
    base = Path(file).parent
    for i, hook in enumerate(hooks):
        loc: Loc = ("alerts", "webhooks", i)
        secret = raw_secrets[i] if i < len(raw_secrets) else None
        if isinstance(secret, str) and secret and "${" not in secret:
            out.append(issue((*loc, "secret"), "a webhook secret must not be written in the "
                             "policy: write it as ${ENV_VAR} or use secret_file", lines))
        path_text = hook.get("secret_file")
        if not isinstance(path_text, str) or not path_text:
            continue
        if secret is not None:
            out.append(issue((*loc, "secret_file"), "set either secret or secret_file, "
                             "not both", lines))
            continue
        path = Path(path_text)
        path = path if path.is_absolute() else base / path
        try:
            hook["secret"] = path.read_text().strip()
        except OSError as e:
            out.append(issue((*loc, "secret_file"), f"cannot read {str(path)!r}: {e.strerror}",
                             lines))
    return out


def _webhooks(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    alerts = data.get("alerts")
    hooks = alerts.get("webhooks") if isinstance(alerts, dict) else None
    if not isinstance(hooks, list):
        return []
    return [h if isinstance(h, dict) else {} for h in hooks]
