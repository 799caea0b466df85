"""A guard's verdict as data: one entry of the request record's `guards` list.

    {"name": "no-cards", "stage": "input", "verdict": "block", "ms": 0.041,
     "labels": ["card"], "at_ms": 1.9}

`verdict` is `pass`, `block`, `redact`, `flag`, or — for a classifier that gave no answer —
`fail_open` (let through) / `fail_closed` (refused). `labels` are the kinds of thing found
(`card`, `AWSKeyDetector`, `deny_list`, a Llama Guard category), never the matched text.
`at_ms` is when the check started, after the request's start (the trace span's start);
`deployment` is there when the check ran for one upstream attempt (`external_only`).
The ledger stores the list as JSON (`requests.guards`), metrics count it at settlement and
the tracer turns each entry into an `apply_guardrail {name}` span.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from gateway.accounting.records import RequestRecord

# Bound once: a clock is made for every check of every request.
_perf_counter, _time = time.perf_counter, time.time
# A check that ran several times on one request (a stream's segments) reports the gravest.
_GRAVITY = {"pass": 0, "fail_open": 1, "flag": 2, "redact": 2, "block": 3, "fail_closed": 3}


class VerdictClock:
    """Times one check and adds its verdict to the record."""

    __slots__ = ("_entry", "_record", "_t0")

    def __init__(self, record: RequestRecord, name: str, stage: str,
                 deployment: str | None = None) -> None:
        self._record = record
        self._t0 = _perf_counter()
        at = (_time() - record.ts.timestamp()) * 1000
        entry: dict[str, Any] = {"name": name, "stage": stage, "verdict": "pass", "ms": 0.0,
                                 "labels": [], "at_ms": int(at * 1000) / 1000}
        if deployment is not None:
            entry["deployment"] = deployment
        self._entry = entry
        guards = record.guards
        if guards is None:
            record.guards = [entry]
        else:
            guards.append(entry)

    @property
    def entry(self) -> dict[str, Any]:
        return self._entry

    def done(self, verdict: str, labels: Iterable[str] = ()) -> None:
        """The check's outcome (a stream's entry may be updated again as findings come)."""
        e = self._entry
        e["verdict"] = verdict
        if labels:
            e["labels"] = sorted({*e["labels"], *labels})
        e["ms"] = int((_perf_counter() - self._t0) * 1_000_000) / 1000

    def worse(self, verdict: str, labels: Iterable[str] = ()) -> None:
        """A further finding on the same check (a stream's next segment): the entry keeps
        the gravest verdict seen and every label."""
        e = self._entry
        if _GRAVITY[verdict] > _GRAVITY.get(e["verdict"], 0):
            e["verdict"] = verdict
        if labels:
            e["labels"] = sorted({*e["labels"], *labels})

    def add_time(self, seconds: float) -> None:
        """Streams: the check's time is the sum of its scans, not the stream's length."""
        self._entry["ms"] = round(self._entry["ms"] + seconds * 1000, 3)
