"""What the console's policy page and `GET /admin/policy` show: the policy in force with its
secrets masked, when it was loaded, the last reload's result and messages, and a diff against
the version it replaced.

The watcher (`reload.py`) reports every reload attempt here; nothing on the request path
touches it. Only masked text is kept, so no secret can leak from here even by mistake.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml

from gateway.policy.load import policy_warnings
from gateway.policy.models import Policy

MASK = "***"
# Fields whose value is a secret wherever they appear (provider keys, the admin key) and key
# hashes (not secrets, but nothing an admin needs to read off a page).
_SECRET_FIELDS = frozenset({"api_key", "admin_key", "hash"})
# Maps whose every value may be a credential (a provider's extra headers: `Authorization`).
_SECRET_MAPS = frozenset({"headers"})

Result = Literal["ok", "rejected", "refused", "failed"]


def _mask_url(value: str) -> str:
    """A URL with its password replaced (`postgresql://u:***@host/db`)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if not parts.scheme or parts.password is None:
        return value
    netloc = f"{parts.username or ''}:{MASK}@{parts.hostname or ''}" + (
        f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def mask(value: Any, key: str = "") -> Any:
    """A policy dump with every secret replaced by `***` (recursively)."""
    if isinstance(value, dict):
        if key in _SECRET_MAPS:
            return {k: MASK for k in value}
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if key in _SECRET_FIELDS and value is not None:
        return MASK
    if isinstance(value, str) and "://" in value:
        return _mask_url(value)
    return value


def masked_text(policy: Policy) -> str:
    """The policy as YAML, defaults filled in, secrets masked."""
    doc = mask(policy.model_dump(mode="json", by_alias=True))
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True, slots=True)
class ReloadAttempt:
    at: datetime
    result: Result
    messages: tuple[str, ...]


@dataclass(slots=True)
class PolicyHistory:
    """The policy in force and the reloads that led to it (this replica's view).

    The masked YAML is rendered only when someone asks for it (the console's policy page):
    rendering a 10,000-tenant policy takes seconds, which start-up and reloads must not pay."""

    path: str | None
    policy: Policy
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    previous: Policy | None = None
    last_reload: ReloadAttempt | None = None
    warnings: tuple[str, ...] = ()
    _texts: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, policy: Policy, path: str | None) -> PolicyHistory:
        return cls(path, policy, warnings=_warnings(policy))

    def _text(self, policy: Policy) -> str:
        key = id(policy)
        if key not in self._texts:
            self._texts[key] = masked_text(policy)
        return self._texts[key]

    @property
    def text(self) -> str:
        return self._text(self.policy)

    @property
    def previous_text(self) -> str | None:
        return None if self.previous is None else self._text(self.previous)

    def applied(self, policy: Policy) -> None:
        """A reload swapped `policy` in."""
        now = datetime.now(UTC)
        self.previous, self.policy = self.policy, policy
        # Only the two policies still shown keep their rendered text.
        keep = {id(self.policy), id(self.previous)}
        self._texts = {k: v for k, v in self._texts.items() if k in keep}
        self.loaded_at = now
        self.warnings = _warnings(policy)
        self.last_reload = ReloadAttempt(now, "ok", self.warnings)

    def not_applied(self, result: Result, messages: Sequence[str]) -> None:
        """A reload was rejected (invalid file), refused (needs a restart) or failed; the
        policy in force is unchanged."""
        lines = tuple(line for m in messages for line in str(m).splitlines() if line.strip())
        self.last_reload = ReloadAttempt(datetime.now(UTC), result, lines)

    def diff(self) -> list[str]:
        """Unified diff from the previous policy to this one ([] before the first reload)."""
        previous = self.previous_text
        if previous is None:
            return []
        return list(difflib.unified_diff(
            previous.splitlines(), self.text.splitlines(), "previous", "in force",
            lineterm=""))

    def as_json(self) -> dict[str, Any]:
        """The `GET /admin/policy` document."""
        last = self.last_reload
        return {
            "path": self.path,
            "loaded_at": _iso(self.loaded_at),
            "warnings": list(self.warnings),
            "last_reload": None if last is None else {
                "at": _iso(last.at), "result": last.result, "messages": list(last.messages)},
            "policy": self.text,
            "diff": "\n".join(self.diff()),
        }


def _warnings(policy: Policy) -> tuple[str, ...]:
    return tuple(w.render("policy") for w in policy_warnings(policy))


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
