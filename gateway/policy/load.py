"""Load a policy file: YAML → `${ENV}` interpolation → pydantic → cross-reference checks.

Every problem is reported as one `PolicyIssue` naming the YAML path (and line), the value, and
what to change; `load_policy` raises `PolicyError` carrying all of them at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.policy.models import Policy

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    path: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(Exception):
    def __init__(self, file: str, issues: list[PolicyIssue]) -> None:
        self.file = file
        self.issues = issues
        super().__init__("\n".join(i.render(file) for i in issues))


def _lines(node: yaml.Node, path: tuple[str | int, ...],
           out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[(*path, key)] = k.start_mark.line + 1
            _lines(v, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, (*path, i), out)


def _fmt_path(parts: tuple[str | int, ...]) -> str:
    s = ""
    for p in parts:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _interpolate(data: Any, env: Mapping[str, str], path: tuple[str | int, ...],
                 issues: list[PolicyIssue]) -> Any:
    if isinstance(data, dict):
        return {k: _interpolate(v, env, (*path, k), issues) for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolate(v, env, (*path, i), issues) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        def sub(m: re.Match[str]) -> str:
            name, has_default, default = m.group(1), m.group(2), m.group(3)
            if name in env and env[name] != "":
                return env[name]
            if has_default is not None:
                return default or ""
            issues.append(PolicyIssue(
                _fmt_path(path),
                f"environment variable {name} is not set; export it, or write "
                f"${{{name}:-default}} to make it optional",
            ))
            return ""
        return _ENV.sub(sub, data)
    return data


def _pydantic_issues(err: ValidationError, lines: dict[tuple[str | int, ...], int],
                     data: Any) -> list[PolicyIssue]:
    out: list[PolicyIssue] = []
    for e in err.errors():
        loc: tuple[str | int, ...] = tuple(
            p for p in e["loc"] if not (isinstance(p, str) and p in _PROVIDER_KINDS)
        )
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against docs/policy.md"
        elif e["type"] == "union_tag_invalid":
            kind = e["input"].get("kind") if isinstance(e["input"], dict) else e["input"]
            msg = f"unknown provider kind {kind!r} (known: {', '.join(sorted(_PROVIDER_KINDS))})"
        elif e["type"] == "union_tag_not_found":
            msg = f"missing 'kind' (one of: {', '.join(sorted(_PROVIDER_KINDS))})"
        elif "input" in e and not isinstance(e["input"], dict | list) and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        line = None
        for i in range(len(loc), -1, -1):
            if loc[:i] in lines:
                line = lines[loc[:i]]
                break
        out.append(PolicyIssue(_fmt_path(loc), msg, line))
    return out


_PROVIDER_KINDS = {"openai", "openai-compatible", "vllm", "azure", "anthropic", "gemini", "local"}


def _cross_check(p: Policy, lines: dict[tuple[str | int, ...], int]) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    known_p = ", ".join(sorted(p.providers)) or "none declared"
    known_m = ", ".join(sorted(p.models)) or "none declared"
    for mname, route in p.models.items():
        ids: set[str] = set()
        for i, d in enumerate(route.deployments):
            loc: tuple[str | int, ...] = ("models", mname, "deployments", i)
            if d.provider not in p.providers:
                issues.append(PolicyIssue(_fmt_path((*loc, "provider")),
                              f"unknown provider {d.provider!r} (known: {known_p})",
                              lines.get((*loc, "provider"))))
            if d.id in ids:
                issues.append(PolicyIssue(_fmt_path(loc),
                              f"duplicate deployment {d.id!r}; give one a distinct `name`",
                              lines.get(loc)))
            ids.add(d.id)
        if route.deployments and all(d.weight == 0 for d in route.deployments):
            issues.append(PolicyIssue(f"models.{mname}.deployments",
                          "every deployment has weight 0, so the model can serve nothing; "
                          "give at least one a positive weight",
                          lines.get(("models", mname, "deployments"))))
        for key in ("fallbacks", "context_fallbacks"):
            for i, fb in enumerate(getattr(route, key)):
                loc = ("models", mname, key, i)
                if fb not in p.models:
                    issues.append(PolicyIssue(_fmt_path(loc),
                                  f"unknown model {fb!r} (known: {known_m})", lines.get(loc)))
                elif fb == mname:
                    issues.append(PolicyIssue(_fmt_path(loc),
                                  "a model cannot fall back to itself", lines.get(loc)))
    for tname, t in p.tenants.items():
        for i, m in enumerate(t.models or []):
            loc = ("tenants", tname, "models", i)
            if m not in p.models:
                issues.append(PolicyIssue(_fmt_path(loc),
                              f"unknown model {m!r} (known: {known_m})", lines.get(loc)))
        for m in t.model_limits:
            if m not in p.models:
                loc = ("tenants", tname, "model_limits", m)
                issues.append(PolicyIssue(_fmt_path(loc),
                              f"unknown model {m!r} (known: {known_m})", lines.get(loc)))
    return issues


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


def parse_policy(text: str, file: str = "<policy>", env: Mapping[str, str] | None = None) -> Policy:
    env = os.environ if env is None else env
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PolicyError(file, [PolicyIssue("", f"invalid YAML: {getattr(e, 'problem', e)}",
                                             mark.line + 1 if mark else None)]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(file, [PolicyIssue("", "the policy must be a mapping of sections "
                                             "(server, providers, models, …)", 1)])
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    issues: list[PolicyIssue] = []
    data = _interpolate(raw, env, (), issues)
    for iss in issues:
        object.__setattr__(iss, "line", _line_for(iss.path, lines))
    _read_key_files(data, file, issues)
    if issues:
        raise PolicyError(file, issues)
    _drop_unkeyed_optional(data)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(file, _pydantic_issues(e, lines, data)) from None
    issues = _cross_check(policy, lines)
    issues += _pricing_issues(policy)
    if issues:
        raise PolicyError(file, issues)
    return policy


def _pricing_issues(policy: Policy) -> list[PolicyIssue]:
    """Prices are checked by the price book itself (dates, duplicates, override targets)."""
    from gateway.accounting.pricing import PriceBook, PricingError

    try:
        PriceBook(policy)
    except PricingError as e:
        path, _, msg = str(e).partition(": ")
        return [PolicyIssue(path, msg or str(e))]
    return []


def _line_for(path: str, lines: dict[tuple[str | int, ...], int]) -> int | None:
    for k, v in lines.items():
        if _fmt_path(k) == path:
            return v
    return None


def _read_key_files(data: dict[str, Any], file: str, issues: list[PolicyIssue]) -> None:
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return
    base = Path(file).parent
    for name, p in providers.items():
        if isinstance(p, dict) and p.get("api_key_file"):
            path = Path(p["api_key_file"])
            path = path if path.is_absolute() else base / path
            try:
                p["api_key"] = path.read_text().strip()
            except OSError as e:
                issues.append(PolicyIssue(f"providers.{name}.api_key_file",
                                          f"cannot read {str(path)!r}: {e.strerror}"))


def load_policy(path: str | Path, env: Mapping[str, str] | None = None) -> Policy:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PolicyError(str(p), [PolicyIssue("", f"cannot read the policy: {e.strerror}")]
                          ) from None
    return parse_policy(text, str(p), env)
