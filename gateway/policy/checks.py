"""Cross-reference checks over the interpolated policy data, and "did you mean" suggestions.

The checks read the plain mapping rather than the validated `Policy`, so they still run when
pydantic rejected part of the file: one `policy check` reports schema and reference errors
together. A value of the wrong shape is skipped here; the schema reports it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from gateway.policy.issues import Lines, Loc, PolicyIssue, issue
from gateway.policy.rollout_checks import rollout_issues

_CLOSE = 0.6  # difflib's own default cutoff: 'fallback' → 'fallbacks', 'gpt4o' → 'gpt-4o'
_LISTED = 20  # names shown after "known:"; a policy can have thousands of tenants

# ref(loc, what, name, declared): report `name` at `loc` unless `declared` has it
_Ref = Callable[[Loc, str, object, Collection[str]], None]


def closest(name: object, choices: Iterable[str]) -> str | None:
    """The one choice closest to `name`, or None when none is close or two are equally close
    (`gpu-c` is as near `gpu-a` as `gpu-b`: naming one would be a guess)."""
    if not isinstance(name, str) or not name:
        return None
    low = name.lower()
    scored: list[tuple[float, str]] = []
    for c in choices:
        m = difflib.SequenceMatcher(None, low, c.lower())
        if m.real_quick_ratio() >= _CLOSE and m.quick_ratio() >= _CLOSE:
            r = m.ratio()
            if r >= _CLOSE:
                scored.append((r, c))
    scored.sort(key=lambda s: -s[0])
    if not scored or (len(scored) > 1 and scored[1][0] == scored[0][0]):
        return None
    return scored[0][1]


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`; did you mean 'fallbacks'?`, or "" when there is no clear suggestion."""
    best = closest(name, choices)
    return f"; did you mean {best!r}?" if best is not None else ""


def known(names: Iterable[str]) -> str:
    listed = sorted(names)
    if not listed:
        return "none declared"
    more = len(listed) - _LISTED
    return ", ".join(listed[:_LISTED]) + (f" and {more} more" if more > 0 else "")


def unknown(what: str, name: str, choices: Collection[str]) -> str:
    """`unknown provider 'opnai'; did you mean 'openai'? (known: gpu-a, openai)`."""
    return f"unknown {what} {name!r}{did_you_mean(name, choices)} (known: {known(choices)})"


def _mapping(v: object) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def _skipped(loc: Loc, skip: Collection[Loc]) -> bool:
    # A value left empty by a missing ${VAR} was reported once already, as the variable.
    return any(loc[:i] in skip for i in range(1, len(loc) + 1))


def _weight(d: Mapping[str, Any]) -> float | None:
    w = d.get("weight", 1.0)
    return float(w) if isinstance(w, int | float) and not isinstance(w, bool) else None


def reference_issues(data: Mapping[str, Any], lines: Lines,
                     skip: Collection[Loc] = ()) -> list[PolicyIssue]:
    """Names that must refer to something declared: deployments' providers, fallbacks,
    tenants' models; distinct deployment ids; a model with some positive weight."""
    providers = _mapping(data.get("providers"))
    models = _mapping(data.get("models"))
    out: list[PolicyIssue] = []

    def ref(loc: Loc, what: str, name: object, declared: Collection[str]) -> None:
        if isinstance(name, str) and name not in declared and not _skipped(loc, skip):
            out.append(issue(loc, unknown(what, name, declared), lines))

    for mname, route in models.items():
        if not isinstance(route, dict):
            continue
        deployments = route.get("deployments")
        if isinstance(deployments, list):
            out += _deployment_issues(mname, deployments, lines, ref, providers)
        out += rollout_issues(mname, route, models, _mapping(data.get("tenants")), lines, ref)
        for key in ("fallbacks", "context_fallbacks"):
            fallbacks = route.get(key)
            for i, fb in enumerate(fallbacks if isinstance(fallbacks, list) else []):
                loc: Loc = ("models", mname, key, i)
                if fb == mname:
                    out.append(issue(loc, "a model cannot fall back to itself", lines))
                else:
                    ref(loc, "model", fb, models)
        spill = route.get("spill")
        spill_to = spill.get("to") if isinstance(spill, dict) else None
        for i, to in enumerate(spill_to if isinstance(spill_to, list) else []):
            if to == mname:
                out.append(issue(("models", mname, "spill", "to", i),
                                 "a model cannot spill to itself", lines))
            else:
                ref(("models", mname, "spill", "to", i), "model", to, models)
    for tname, tenant in _mapping(data.get("tenants")).items():
        if not isinstance(tenant, dict):
            continue
        allowed = tenant.get("models")
        for i, m in enumerate(allowed if isinstance(allowed, list) else []):
            ref(("tenants", tname, "models", i), "model", m, models)
        for m in _mapping(tenant.get("model_limits")):
            ref(("tenants", tname, "model_limits", m), "model", m, models)
    flow_models = _mapping(data.get("flow_control")).get("models")
    for i, m in enumerate(flow_models if isinstance(flow_models, list) else []):
        ref(("flow_control", "models", i), "model", m, models)
    tenants = _mapping(data.get("tenants"))
    for gname, guard in _mapping(data.get("guards")).items():
        # A guard's classifier and scope name models and tenants (docs/guards.md).
        g = _mapping(guard)
        ref(("guards", gname, "detector", "model"), "model",
            _mapping(g.get("detector")).get("model"), models)
        scope = _mapping(g.get("applies_to"))
        for key, declared in (("models", models), ("tenants", tenants)):
            names = scope.get(key)
            for i, n in enumerate(names if isinstance(names, list) and declared else []):
                ref(("guards", gname, "applies_to", key, i), key[:-1], n, declared)
    # The shared response cache lives in Redis (docs/stages.md): it needs the URL.
    if _mapping(data.get("cache")).get("backend") == "redis" and not _mapping(
            data.get("state")).get("redis_url") and not _skipped(("state", "redis_url"), skip):
        out.append(issue(("cache", "backend"), "`redis` needs state.redis_url "
                         "(where every replica's shared cache lives); set it, or use "
                         "backend: memory", lines))
    return out


def _deployment_issues(mname: str, deployments: list[Any], lines: Lines, ref: _Ref,
                       providers: Mapping[str, Any]) -> list[PolicyIssue]:
    out: list[PolicyIssue] = []
    ids: set[str] = set()
    weights: list[float | None] = []
    for i, d in enumerate(deployments):
        if not isinstance(d, dict):
            weights.append(None)
            continue
        loc: Loc = ("models", mname, "deployments", i)
        ref((*loc, "provider"), "provider", d.get("provider"), providers)
        name, provider, model = d.get("name"), d.get("provider"), d.get("model")
        ident = name if isinstance(name, str) and name else (
            f"{provider}/{model}" if isinstance(provider, str) and isinstance(model, str)
            else None)
        if ident is not None and ident in ids:
            out.append(issue(loc, f"duplicate deployment {ident!r}; give one a distinct `name`",
                             lines))
        if ident is not None:
            ids.add(ident)
        weights.append(_weight(d))
    if weights and all(w == 0 for w in weights):
        out.append(issue(("models", mname, "deployments"),
                         "every deployment has weight 0, so the model can serve nothing; "
                         "give at least one a positive weight", lines))
    return out


def fallback_warnings(models: Mapping[str, Any], tenants: Mapping[str, Any],
                      lines: Lines) -> list[PolicyIssue]:
    """A tenant's model that falls back to a model outside the tenant's list: the router skips
    that fallback for the tenant (a tenant never reaches a model it may not use), which is
    likely not what the author meant."""
    out: list[PolicyIssue] = []
    for tname, tenant in tenants.items():
        allowed = tenant.get("models") if isinstance(tenant, dict) else None
        if not isinstance(allowed, list):
            continue  # unset: every model is allowed
        may_use = {m for m in allowed if isinstance(m, str)}
        for i, mname in enumerate(allowed):
            route = models.get(mname) if isinstance(mname, str) else None
            if not isinstance(route, dict):
                continue
            for key in ("fallbacks", "context_fallbacks"):
                fallbacks = route.get(key)
                for fb in fallbacks if isinstance(fallbacks, list) else []:
                    if isinstance(fb, str) and fb in models and fb not in may_use:
                        out.append(issue(
                            ("tenants", tname, "models", i),
                            f"model {mname!r} falls back to {fb!r} (models.{mname}.{key}), "
                            f"which tenant {tname!r} may not use, so {tname}'s requests skip "
                            f"that fallback; add {fb!r} to this list if {tname} may use it",
                            lines, "warning"))
    return out
