"""Regenerate the key reference in docs/policy.md from the policy models' field docstrings.

    python scripts/gen_policy_docs.py          # rewrite docs/policy.md's reference section
    python scripts/gen_policy_docs.py --check  # exit 1 if it is stale (the test suite runs this)
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from gateway.policy import alerts as al
from gateway.policy import cache as c
from gateway.policy import flow as fl
from gateway.policy import guards as g
from gateway.policy import models as m
from gateway.policy import rollouts as r
from gateway.policy import spill as sp
from gateway.policy import tenants as t

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
BEGIN = "<!-- BEGIN GENERATED REFERENCE -->"
END = "<!-- END GENERATED REFERENCE -->"

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("(top level)", m.Policy),
    ("server", m.Server),
    ("state", m.State),
    ("ledger", m.Ledger),
    ("accounting", m.Accounting),
    ("router", m.Router),
    ("router.circuit_breaker", m.CircuitBreaker),
    ("observability", m.Observability),
    ("responses", m.Responses),
    ("console", m.Console),
    ("alerts", al.Alerts),
    ("alerts.webhooks[]", al.Webhook),
    ("cache (the store and the default rule)", c.CacheSettings),
    ("flow_control", fl.FlowControl),
    ("models.NAME.cache (also tenants.NAME.cache)", c.CacheRule),
    ("guards.NAME", g.Guard),
    ("guards.NAME.applies_to", g.GuardScope),
    ("guards.NAME.detector with kind secrets", g.SecretsDetector),
    ("guards.NAME.detector with kind pii", g.PiiDetector),
    ("guards.NAME.detector with kind deny_list", g.DenyListDetector),
    ("guards.NAME.detector with kind regex", g.RegexDetector),
    ("guards.NAME.detector with kind length", g.LengthDetector),
    ("guards.NAME.detector with kind model", g.ModelDetector),
    ("providers.NAME (every kind)", m.ProviderBase),
    ("providers.NAME with kind openai / openai-compatible / vllm", m.OpenAIProvider),
    ("providers.NAME with kind azure", m.AzureProvider),
    ("providers.NAME with kind anthropic", m.AnthropicProvider),
    ("providers.NAME with kind gemini", m.GeminiProvider),
    ("providers.NAME with kind local", m.LocalProvider),
    ("providers.NAME.timeouts (also deployments[].timeouts)", m.Timeouts),
    ("models.NAME", m.ModelRoute),
    ("models.NAME.deployments[]", m.Deployment),
    ("models.NAME.deployments[].pricing[] (also tenants.NAME.pricing.DEPLOYMENT[])", m.Price),
    ("models.NAME.session_key with a header", sp.SessionHeader),
    ("models.NAME.spill", sp.Spill),
    ("models.NAME.rollout", r.Rollout),
    ("models.NAME.rollout.candidate", r.RolloutCandidate),
    ("models.NAME.rollout.steps[]", r.RolloutStep),
    ("models.NAME.rollout.gates", r.RolloutGates),
    ("models.NAME.rollout.gates.error_rate (also length_share)", r.RateGate),
    ("models.NAME.rollout.gates.ttft_p95 (also tpot_p50, tpot_p95, latency_p95, "
     "cost_per_request)", r.RatioGate),
    ("models.NAME.rollout.shadow", r.RolloutShadow),
    ("tenants.NAME", t.TenantConfig),
    ("tenants.NAME.keys[]", t.KeyConfig),
    ("tenants.NAME.limits (also model_limits.MODEL, keys[].limits)", t.RateLimits),
    ("tenants.NAME.budget", t.Budget),
]


def _type(ann: object) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (list, tuple):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type(args[1])}"
    if isinstance(ann, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "Decimal": "decimal (string)"}.get(ann.__name__, ann.__name__)
    return str(ann)


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            v = field.default_factory()
        except TypeError:
            return "see below"
        return "`{}`" if isinstance(v, dict) else "`[]`" if isinstance(v, list) else "see below"
    return f"`{field.default}`" if field.default is not None else "unset"


def render() -> str:
    out = [BEGIN, ""]
    own_base = set(m.ProviderBase.model_fields)
    for title, model in SECTIONS:
        out += [f"### `{title}`", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "A base class")):
            out += [doc.splitlines()[0], ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            if model is not m.ProviderBase and issubclass(model, m.ProviderBase) \
                    and name in own_base:
                continue
            key = field.alias or name
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            out.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {desc} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def main() -> int:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[end:]
    if "--check" in sys.argv:
        if new != text:
            print("docs/policy.md is stale: run python scripts/gen_policy_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
