"""The policy's own deny-lists and regular expressions.

A deny-list compiles to one alternation (longest words first, so `acme corp` wins over
`acme`), matched on word boundaries; a phrase's spaces match any run of whitespace, so a line
break inside it does not hide it. Regexes are compiled once per policy load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.guards.base import Finding


class PatternDetector:
    """Findings of any of a list of compiled patterns, under one label."""

    def __init__(self, patterns: Sequence[re.Pattern[str]], label: str) -> None:
        self.patterns = list(patterns)
        self.label = label

    def find(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        for p in self.patterns:
            # Most text matches nothing: one search says so without building an iterator.
            if p.search(text) is None:
                continue
            out += [Finding(m.start(), m.end(), self.label) for m in p.finditer(text)
                    if m.end() > m.start()]
        return out


def deny_list(words: Sequence[str], case_sensitive: bool = False) -> PatternDetector:
    parts = []
    for w in sorted({w.strip() for w in words}, key=len, reverse=True):
        body = r"\s+".join(re.escape(p) for p in w.split())
        # \b only where the word starts or ends with a word character (`c++` has no \b after).
        left = r"\b" if re.match(r"\w", w) else ""
        right = r"\b" if re.search(r"\w$", w) else ""
        parts.append(left + body + right)
    flags = 0 if case_sensitive else re.IGNORECASE
    return PatternDetector([re.compile("|".join(parts), flags)], "deny_list")


def regexes(patterns: Sequence[str], case_sensitive: bool = True) -> PatternDetector:
    flags = 0 if case_sensitive else re.IGNORECASE
    return PatternDetector([re.compile(p, flags) for p in patterns], "regex")
