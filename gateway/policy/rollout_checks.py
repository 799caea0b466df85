"""Cross-references of a model's `rollout:` (policy check): the candidate's deployments are
this model's, or its model is another declared one; some baseline remains; the shadow's
tenant exists. On the raw data, like checks.py, so schema errors are reported beside these."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from gateway.policy.issues import Lines, Loc, PolicyIssue, issue

_Ref = Callable[[Loc, str, object, Collection[str]], None]


def _ident(d: Any) -> str | None:
    if not isinstance(d, dict):
        return None
    name, provider, model = d.get("name"), d.get("provider"), d.get("model")
    if isinstance(name, str) and name:
        return name
    if isinstance(provider, str) and isinstance(model, str):
        return f"{provider}/{model}"
    return None


def rollout_issues(mname: str, route: Mapping[str, Any], models: Mapping[str, Any],
                   tenants: Mapping[str, Any], lines: Lines, ref: _Ref) -> list[PolicyIssue]:
    rollout = route.get("rollout")
    if not isinstance(rollout, dict):
        return []
    out: list[PolicyIssue] = []
    base: Loc = ("models", mname, "rollout")
    deployments = route.get("deployments")
    ids = [i for i in map(_ident, deployments if isinstance(deployments, list) else [])
           if i is not None]
    cand = rollout.get("candidate")
    if isinstance(cand, dict):
        names = cand.get("deployments")
        listed = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        for i, n in enumerate(listed):
            ref((*base, "candidate", "deployments", i), "deployment", n, ids)
        if listed and ids and set(ids) <= set(listed):
            out.append(issue((*base, "candidate", "deployments"),
                             f"every deployment of {mname!r} is in the candidate, so no "
                             "baseline is left to compare with; keep at least one out", lines))
        other = cand.get("model")
        if other == mname:
            out.append(issue((*base, "candidate", "model"),
                             "a model cannot be its own candidate; name another model or "
                             "some of this model's deployments", lines))
        elif other is not None:
            ref((*base, "candidate", "model"), "model", other, models)
    shadow = rollout.get("shadow")
    if isinstance(shadow, dict):
        ref((*base, "shadow", "tenant"), "tenant", shadow.get("tenant"), tenants)
    return out
