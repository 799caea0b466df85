"""What `policy check` reports: one `PolicyIssue` per problem, with its YAML path and line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Loc = tuple[str | int, ...]
Lines = Mapping[Loc, int]
Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    path: str
    message: str
    line: int | None = None
    severity: Severity = "error"
    """A warning is printed but does not reject the policy."""

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        if self.severity == "warning":
            where += ": warning"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(Exception):
    """The policy was rejected: `issues` are its errors, `warnings` what else was noticed."""

    def __init__(self, file: str, issues: list[PolicyIssue],
                 warnings: Iterable[PolicyIssue] = ()) -> None:
        self.file = file
        self.issues = issues
        self.warnings = list(warnings)
        super().__init__("\n".join(i.render(file) for i in issues))


def fmt_path(parts: Loc) -> str:
    s = ""
    for p in parts:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def line_of(loc: Loc, lines: Lines) -> int | None:
    """The line of `loc`, or of its nearest ancestor the YAML has (a default has no line)."""
    for i in range(len(loc), -1, -1):
        line = lines.get(loc[:i])
        if line is not None:
            return line
    return None


def issue(loc: Loc, message: str, lines: Lines, severity: Severity = "error") -> PolicyIssue:
    return PolicyIssue(fmt_path(loc), message, line_of(loc, lines), severity)


def by_line(issues: Iterable[PolicyIssue]) -> list[PolicyIssue]:
    """In file order, so one run reads top to bottom; issues without a line come last."""
    return sorted(issues, key=lambda i: (i.line is None, i.line or 0))
