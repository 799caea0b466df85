"""What a detector finds, and the one interface every text detector has.

A detector gets plain text and returns the spans it found with a label (`card`, `email`,
`AWSKeyDetector`…). Spans are what redaction replaces; labels are all that is ever recorded —
the matched text itself never leaves the detector's caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    # What was found (a PII type, a detect-secrets plugin, `deny_list`, `regex`): never the
    # matched text.
    label: str


class TextDetector(Protocol):
    """Finds spans in text. Pure and synchronous: no I/O, safe on the hot path."""

    def find(self, text: str) -> list[Finding]: ...


def merge(findings: list[Finding]) -> list[Finding]:
    """Findings sorted, overlapping ones merged (the first label wins), so redaction replaces
    each character at most once."""
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if out and f.start < out[-1].end:
            last = out[-1]
            if f.end > last.end:
                out[-1] = Finding(last.start, f.end, last.label)
            continue
        out.append(f)
    return out


def redact(text: str, findings: list[Finding], replacement: str) -> str:
    """`text` with each finding replaced by `replacement` (`{label}` filled in)."""
    if not findings:
        return text
    parts: list[str] = []
    pos = 0
    for f in merge(findings):
        parts.append(text[pos:f.start])
        parts.append(replacement.format(label=f.label))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)
