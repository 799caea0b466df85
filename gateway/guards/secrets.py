"""Credentials and secrets, with the detect-secrets library's plugin patterns.

detect-secrets (Yelp) keeps the patterns of ~25 credential formats (AWS, GitHub, GitLab,
OpenAI, Slack, Stripe, Twilio, JWTs, private key blocks…). Its `scan_line` runs its file
filters and entropy heuristics too, which on prose flag ordinary words and cost ~0.5 ms a
line; the gateway uses each plugin's compiled `denylist` directly instead, which gives the
spans redaction needs at a fraction of the cost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.keyword import KeywordDetector
from detect_secrets.settings import get_settings

from gateway.guards.base import Finding

# Not credentials (public IPs), or heuristics that flag ordinary words in prose (entropy).
_EXCLUDED = frozenset({"IPPublicDetector", "Base64HighEntropyString", "HexHighEntropyString",
                       "KeywordDetector"})
# Characters a plugin's pattern may take in around the secret itself (delimiters).
_TRIM = " \t\r\n=:\"'"
# A capture group shorter than this is a prefix (GitHub's `ghp`), not the secret.
_MIN_GROUP = 8
# Patterns `re` cannot search by a literal prefix (they open with a lookbehind or an
# alternation) are tried at every position: ~80 % of the plugins' time on prose. Each holds a
# mandatory group whose words a match must contain, read off the pattern's own text here, so
# a cheap substring test skips the regex when none is present (tests/unit/guards: the
# results are the same with and without). (marker in the pattern, words, case-insensitive)
_NEEDS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("(?:key|pwd|pw|password|pass|token)", ("key", "pw", "pass", "token"), True),
    ("(?:key|pwd|password|pass|token)", ("key", "pw", "pass", "token"), True),
    ("(?:secret[-_]?(?:access)?[-_]?key)", ("secret",), True),
    ("(?:https?\\:\\/\\/)", ("http",), True),
    ("(?:http|https)://", ("http",), True),
    ("AKC[a-zA-Z0-9]", ("AKC",), False),
    ("AP[\\dABCDEF]", ("AP",), False),
)


_Needs = tuple[tuple[str, ...], bool]


def _needs(p: re.Pattern[str]) -> _Needs | None:
    """Words one of which any match of `p` contains, or None (always run `p`)."""
    for marker, words, fold in _NEEDS:
        if marker in p.pattern:
            return words, fold and bool(p.flags & re.IGNORECASE)
    return None


# Our own plugins (gateway/guards/secret_plugins.py), registered with detect-secrets as custom
# plugins: the library imports the file and lists its classes with its own.
_OWN_FILE = Path(__file__).with_name("secret_plugins.py")
_OWN_PLUGINS = ("OpenAIProjectKeyDetector",)


def _mapping() -> dict[str, Any]:
    """detect-secrets' secret type → plugin class, our custom plugins included.

    Registering is the library's own mechanism (its settings' `plugins_used` with a
    `file://` path, as `detect-secrets scan --plugin` does); the mapping is cached by the
    library, so its cache is cleared once after registering. Checked on every call because
    the settings are a library-wide singleton that other code may reset."""
    mapping: dict[str, Any] = dict(get_mapping_from_secret_type_to_class())
    if all(any(c.__name__ == n for c in mapping.values()) for n in _OWN_PLUGINS):
        return mapping
    get_settings().configure_plugins(
        [{"name": n, "path": f"file://{_OWN_FILE}"} for n in _OWN_PLUGINS])
    get_mapping_from_secret_type_to_class.cache_clear()
    return dict(get_mapping_from_secret_type_to_class())


def available_plugins() -> list[str]:
    """Names of the pattern-based detect-secrets plugins the detector can use."""
    classes: list[Any] = list(_mapping().values())
    return sorted(c.__name__ for c in classes
                  if c.__name__ not in _EXCLUDED and issubclass(c, RegexBasedDetector))


class SecretsDetector:
    def __init__(self, plugins: Sequence[str] | None = None, keywords: bool = False) -> None:
        classes = {c.__name__: c for c in _mapping().values()}
        names = list(plugins) if plugins is not None else available_plugins()
        self.patterns: list[tuple[str, re.Pattern[str], _Needs | None]] = []
        for name in names:
            cls = classes.get(name)
            if cls is None or not issubclass(cls, RegexBasedDetector):
                raise ValueError(f"unknown detect-secrets plugin {name!r}; choose from "
                                 f"{', '.join(available_plugins())}")
            self.patterns += [(name, p, _needs(p)) for p in cls().denylist]
        self.keywords = KeywordDetector() if keywords else None
        self.prefilter = True

    def find(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        lowered: str | None = None
        for label, pattern, needs in self.patterns:
            if needs is not None and self.prefilter:
                words, fold = needs
                hay = text
                if fold:
                    if lowered is None:
                        lowered = text.lower()
                    hay = lowered
                if not any(w in hay for w in words):
                    continue
            for m in pattern.finditer(text):
                start, end = _secret_span(m)
                if end > start:
                    out.append(Finding(start, end, label))
        if self.keywords is not None:
            for line_start, line in _lines(text):
                for value in self.keywords.analyze_string(line):
                    at = line.find(value)
                    if value and at >= 0:
                        out.append(Finding(line_start + at, line_start + at + len(value),
                                           "KeywordDetector"))
        return out


def _secret_span(m: re.Match[str]) -> tuple[int, int]:
    """The secret inside a match: its longest capture group when the pattern captures the
    secret apart from its context (`aws_key = '…'`), else the whole match without the
    delimiters some patterns take in."""
    best = (m.start(), m.end())
    groups = [m.span(i) for i in range(1, (m.re.groups or 0) + 1) if m.span(i)[0] >= 0]
    long = [g for g in groups if g[1] - g[0] >= _MIN_GROUP]
    if long:
        best = max(long, key=lambda g: g[1] - g[0])
    start, end = best
    s = m.string
    while start < end and s[start] in _TRIM:
        start += 1
    while end > start and s[end - 1] in _TRIM:
        end -= 1
    return start, end


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    pos = 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out
