"""Policy for routing across self-hosted and external deployments of one model: the session
header a model pins conversations on, and the cost-aware spill rule (docs/routing.md,
"Session affinity" and "Cost-aware spill")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.policy.issues import Lines, Loc, PolicyIssue, issue

# An HTTP field name (RFC 9110 `token`); compared lower-cased, as Starlette hands them over.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
# Credentials are never a session key: the key is kept in memory by the strategy.
_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key", "cookie",
                          "proxy-authorization"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SessionHeader(_Strict):
    """`session_key: {header: NAME}`: the conversation key is this request header."""

    header: str = Field(min_length=1, max_length=128)
    """The request header whose value pins a conversation (case-insensitive), e.g.
    `x-conversation-id`. Example: `session_key: {header: x-conversation-id}`."""

    @field_validator("header")
    @classmethod
    def _name(cls, v: str) -> str:
        name = v.strip().lower()
        if not _TOKEN.match(name):
            raise ValueError(f"{v!r} is not an HTTP header name (letters, digits and -)")
        if name in _CREDENTIALS:
            raise ValueError(f"{v!r} carries credentials and cannot pin sessions; name "
                             "another header, such as x-session-id")
        return name


class Spill(_Strict):
    """Self-hosted first while its predicted TTFT stays under `ttft_ms`; external beyond."""

    ttft_ms: float = Field(gt=0, le=600_000)
    """Predicted time to first token (ms) on the best self-hosted deployment above which the
    request goes to an external deployment first, the self-hosted ones staying as fallbacks.
    Predicted from the backend's queue, KV-cache use, the gateway's in-flight picks and
    vLLM's measured queue time (docs/routing.md, "Cost-aware spill"). Example:
    `spill: {ttft_ms: 800}`."""
    to: list[str] = Field(default_factory=list)
    """Other public models (external) whose deployments a spill may go to, besides this
    model's own external deployments; only those the caller's tenant may use. Example:
    `to: [gpt-4o-mini]`."""
    max_price_ratio: float | None = Field(None, gt=0, le=1_000_000)
    """Spill only to an external deployment whose expected price for the request is at most
    this multiple of its share of the self-hosted GPU-hour at current utilisation; over it,
    the request stays self-hosted and the reason is recorded. Unset: any price. Needs
    `gpu_cost_per_hour` on the self-hosted deployments. Example: `max_price_ratio: 4`."""
    request_s: float = Field(2.0, gt=0, le=3600)
    """Seconds one request occupies a self-hosted batch slot, used to predict queue wait
    until the gateway has measured the deployment's latency. Example: `request_s: 5`."""


def spill_warnings(mname: str, route: Mapping[str, Any], providers: Mapping[str, Any],
                   lines: Lines) -> list[PolicyIssue]:
    """A `spill:` rule that cannot do what it says (raw policy data, as `checks.py` reads it):
    nothing self-hosted to fill first, nothing external to spill to, a price ratio with no
    GPU price to compare against, or a rollout (whose arms are ordered instead)."""
    spill = route.get("spill")
    deployments = route.get("deployments")
    if not isinstance(spill, dict) or not isinstance(deployments, list):
        return []
    loc: Loc = ("models", mname, "spill")
    local = priced = external = 0
    for d in deployments:
        if not isinstance(d, dict):
            continue
        prov = providers.get(str(d.get("provider")))
        kind = prov.get("kind") if isinstance(prov, dict) else None
        if d.get("gpu_cost_per_hour") is not None or kind in ("vllm", "local"):
            local += 1
            priced += d.get("gpu_cost_per_hour") is not None
        else:
            external += 1
    out = []

    def warn(message: str) -> None:
        out.append(issue(loc, message, lines, "warning"))

    if not local:
        warn("no deployment is self-hosted (a vllm or local provider, or gpu_cost_per_hour), "
             "so there is nothing to fill first: every request goes external")
    if not external and not spill.get("to"):
        warn("the model has no external deployment and `to` names no model: a spill can only "
             "be recorded as held")
    if spill.get("max_price_ratio") is not None and local and not priced:
        warn("max_price_ratio is ignored: no self-hosted deployment has gpu_cost_per_hour to "
             "compare the external price against")
    if route.get("rollout") is not None:
        warn("the spill rule does not apply while the model has a rollout (its arms are "
             "ordered instead)")
    return out
