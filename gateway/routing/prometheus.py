"""The Prometheus (and OpenMetrics) text exposition, read leniently: what backends' `/metrics`
scrapes are parsed with (`signals.engine_metrics`, the real-engine bench)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


def _labels(line: str, pos: int) -> tuple[dict[str, str], int] | None:
    """Parse `{a="x",b="y"}` starting at the `{` at `pos`; returns labels and the index after
    the `}`. Quoted values may hold commas, braces, `=` and escaped quotes."""
    labels: dict[str, str] = {}
    n = len(line)
    pos += 1
    while True:
        while pos < n and line[pos] in " \t,":
            pos += 1
        if pos >= n:
            return None
        if line[pos] == "}":
            return labels, pos + 1
        eq = line.find("=", pos)
        if eq < 0:
            return None
        name = line[pos:eq].strip()
        pos = eq + 1
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos >= n or line[pos] != '"':
            return None
        pos += 1
        chars: list[str] = []
        while True:
            if pos >= n:
                return None
            ch = line[pos]
            if ch == "\\" and pos + 1 < n:
                nxt = line[pos + 1]
                chars.append(_ESCAPES.get(nxt, "\\" + nxt))
                pos += 2
            elif ch == '"':
                pos += 1
                break
            else:
                chars.append(ch)
                pos += 1
        labels[name] = "".join(chars)


def parse_prometheus(text: str, names: Iterable[str] | None = None) -> list[Sample]:
    """Samples of a Prometheus (or OpenMetrics) text exposition, optionally only those of the
    given metric names. Comments, blank and malformed lines are skipped, never raised on: a
    scrape of a half-upgraded server must not take routing down."""
    wanted = tuple(names) if names is not None else None
    out: list[Sample] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if wanted is not None and not line.startswith(wanted):
            continue  # cheap pre-filter; the exact name is checked below
        end = 0
        while end < len(line) and line[end] not in "{ \t":
            end += 1
        name = line[:end]
        if wanted is not None and name not in wanted:
            continue
        labels: dict[str, str] = {}
        if end < len(line) and line[end] == "{":
            parsed = _labels(line, end)
            if parsed is None:
                continue
            labels, end = parsed
        # Value, then an optional timestamp and an OpenMetrics exemplar (`# {...} v`).
        rest = line[end:].split("#", 1)[0].split()
        if not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        out.append(Sample(name, labels, value))
    return out
