"""Load a policy file: YAML → `${ENV}` interpolation → pydantic → cross-reference checks.

Every problem is reported as one `PolicyIssue` naming the YAML path (and line), the value, and
what to change, and every stage runs even when an earlier one found problems: a missing
variable, a schema error and an unknown provider name all come out of one `policy check`.
`load_policy` raises `PolicyError` carrying all of them at once. Warnings (a fallback a tenant
may not use) never reject a policy; `check_policy` and `policy_warnings` return them.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.policy.alerts import alert_secret_issues
from gateway.policy.checks import fallback_warnings, reference_issues
from gateway.policy.compact import sharing
from gateway.policy.issues import Loc, PolicyError, PolicyIssue, by_line, issue
from gateway.policy.models import Policy
from gateway.policy.schema_issues import schema_issues
from gateway.policy.spill import spill_warnings
from gateway.policy.yaml_data import Lines, parse

__all__ = ["PolicyCheck", "PolicyError", "PolicyIssue", "check_policy", "check_policy_file",
           "load_policy", "parse_policy", "policy_warnings"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """The outcome of checking one file: the policy when it has no errors."""

    file: str
    policy: Policy | None
    errors: list[PolicyIssue]
    warnings: list[PolicyIssue]


def _parse_yaml(text: str, file: str) -> tuple[Any, Lines, list[PolicyIssue]]:
    """One parse: the data, its line index and the keys a mapping repeats (YAML would silently
    keep only the last one: a second `providers:` replaces the first)."""
    try:
        return parse(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PolicyError(file, [PolicyIssue("", f"invalid YAML: {getattr(e, 'problem', e)}",
                                             mark.line + 1 if mark else None)]) from None


def _interpolate(data: Any, env: Mapping[str, str], path: Loc, missing: dict[Loc, str]) -> Any:
    """Substitute `${VAR}`; a missing variable becomes "" and is noted in `missing` so later
    stages can stay quiet about the empty value it left. Copy on write: a mapping or list
    without `${` is returned as it is, so a 10,000-tenant policy is not copied (the stages
    after this one edit the result; only `alert_secret_issues` reads the text as written, and
    it reads the secrets before it edits)."""
    if isinstance(data, dict):
        out: dict[Any, Any] | None = None
        for k, v in data.items():
            new = _interpolate(v, env, (*path, k), missing)
            if new is not v:
                if out is None:
                    out = dict(data)
                out[k] = new
        return data if out is None else out
    if isinstance(data, list):
        items: list[Any] | None = None
        for i, v in enumerate(data):
            new = _interpolate(v, env, (*path, i), missing)
            if new is not v:
                if items is None:
                    items = list(data)
                items[i] = new
        return data if items is None else items
    if isinstance(data, str) and "${" in data:
        def sub(m: re.Match[str]) -> str:
            name, has_default, default = m.group(1), m.group(2), m.group(3)
            if name in env and env[name] != "":
                return env[name]
            if has_default is not None:
                return default or ""
            missing.setdefault(path, name)
            return ""
        return _ENV.sub(sub, data)
    return data


def _read_key_files(data: dict[str, Any], file: str, lines: Mapping[Loc, int]
                    ) -> list[PolicyIssue]:
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return []
    out: list[PolicyIssue] = []
    base = Path(file).parent
    for name, p in providers.items():
        if isinstance(p, dict) and isinstance(p.get("api_key_file"), str) and p["api_key_file"]:
            path = Path(p["api_key_file"])
            path = path if path.is_absolute() else base / path
            try:
                p["api_key"] = path.read_text().strip()
            except OSError as e:
                out.append(issue(("providers", name, "api_key_file"),
                                 f"cannot read {str(path)!r}: {e.strerror}", lines))
    return out


def _drop_unkeyed_optional(data: dict[str, Any]) -> None:
    """Remove optional providers without a key, and what routes to them (see `optional`)."""
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return
    dropped = {n for n, p in providers.items()
               if isinstance(p, dict) and p.get("optional") and not p.get("api_key")
               and not p.get("api_key_file")}
    if not dropped:
        return
    for n in dropped:
        del providers[n]
    models = data.get("models")
    if not isinstance(models, dict):
        return
    for mname in list(models):
        route = models[mname]
        if not isinstance(route, dict) or not isinstance(route.get("deployments"), list):
            continue
        route["deployments"] = [d for d in route["deployments"]
                                if not (isinstance(d, dict) and d.get("provider") in dropped)]
        if not route["deployments"]:
            del models[mname]
    remaining = set(models)
    for route in models.values():
        if isinstance(route, dict):
            for key in ("fallbacks", "context_fallbacks"):
                if isinstance(route.get(key), list):
                    route[key] = [m for m in route[key] if m in remaining]
    tenants = data.get("tenants")
    if isinstance(tenants, dict):
        for t in tenants.values():
            if isinstance(t, dict) and isinstance(t.get("models"), list):
                t["models"] = [m for m in t["models"] if m in remaining]


def _pricing_issues(policy: Policy) -> list[PolicyIssue]:
    """Prices are checked by the price book itself (dates, duplicates, override targets)."""
    from gateway.accounting.pricing import PriceBook, PricingError

    try:
        PriceBook(policy)
    except PricingError as e:
        path, _, msg = str(e).partition(": ")
        return [PolicyIssue(path, msg or str(e))]
    return []


@contextmanager
def paused_cycle_collection() -> Iterator[None]:
    """Checking a 10,000-tenant policy makes ~10^5 objects (dicts, models) that all live until
    it ends, so the cyclic collector rescans a growing heap again and again: half the time of
    the check. They form no cycles (reference counting frees them), so it waits. Loading
    100,000 run-time keys (`auth.py`) is the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_policy(text: str, file: str = "<policy>",
                 env: Mapping[str, str] | None = None) -> PolicyCheck:
    """Every error and warning of a policy text, and the policy itself when it has no errors."""
    with paused_cycle_collection(), sharing():
        return _check(text, file, os.environ if env is None else env)


def _check(text: str, file: str, env: Mapping[str, str]) -> PolicyCheck:
    try:
        raw, lines, errors = _parse_yaml(text, file)
    except PolicyError as e:
        return PolicyCheck(file, None, e.issues, [])
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return PolicyCheck(file, None, [PolicyIssue(
            "", "the policy must be a mapping of sections (server, providers, models, …)", 1)],
            [])
    missing: dict[Loc, str] = {}
    data = _interpolate(raw, env, (), missing)
    errors += [issue(loc, f"environment variable {name} is not set; export it, or write "
                          f"${{{name}:-default}} to make it optional", lines)
               for loc, name in missing.items()]
    errors += _read_key_files(data, file, lines)
    errors += alert_secret_issues(raw, data, file, lines)
    _drop_unkeyed_optional(data)
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        errors += schema_issues(e, lines, missing)
    errors += reference_issues(data, lines, missing)
    if policy is not None:
        # The price book needs a policy the schema accepted.
        errors += _pricing_issues(policy)
    models, tenants = data.get("models"), data.get("tenants")
    warnings = fallback_warnings(models, tenants, lines) \
        if isinstance(models, dict) and isinstance(tenants, dict) else []
    if isinstance(models, dict):
        providers = data.get("providers")
        warnings += [w for name, route in models.items() if isinstance(route, dict)
                     for w in spill_warnings(name, route, providers
                                             if isinstance(providers, dict) else {}, lines)]
    return PolicyCheck(file, None if errors else policy, by_line(errors), by_line(warnings))


def check_policy_file(path: str | Path, env: Mapping[str, str] | None = None) -> PolicyCheck:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        return PolicyCheck(str(p), None, [PolicyIssue("", f"cannot read the policy: "
                                                          f"{e.strerror}")], [])
    return check_policy(text, str(p), env)


def _policy_or_raise(check: PolicyCheck) -> Policy:
    if check.policy is None:
        raise PolicyError(check.file, check.errors, check.warnings)
    return check.policy


def parse_policy(text: str, file: str = "<policy>", env: Mapping[str, str] | None = None) -> Policy:
    return _policy_or_raise(check_policy(text, file, env))


def load_policy(path: str | Path, env: Mapping[str, str] | None = None) -> Policy:
    return _policy_or_raise(check_policy_file(path, env))


def policy_warnings(policy: Policy) -> list[PolicyIssue]:
    """The warnings of a loaded policy (for `serve` and reload to log), without line numbers:
    the policy object no longer knows them."""
    models = {name: {"fallbacks": list(r.fallbacks),
                     "context_fallbacks": list(r.context_fallbacks)}
              for name, r in policy.models.items()}
    tenants = {name: {"models": None if t.models is None else list(t.models)}
               for name, t in policy.tenants.items()}
    return fallback_warnings(models, tenants, {})
