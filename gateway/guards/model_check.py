"""One `model` guard's question to its classifier, and what its answer means for the text.

Shared by every place a classifier runs — the prompt (before routing, or per external
attempt), a whole reply, and each segment of a stream — so `fail_open`/`fail_closed`, the
categories and the verdict entry mean the same everywhere.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.guards.classifier import Classification, classify
from gateway.guards.refusal import CONTENT, unchecked

if TYPE_CHECKING:
    from gateway.accounting.records import AttemptRecord, RequestRecord
    from gateway.guards.compiled import CompiledGuard
    from gateway.guards.verdicts import VerdictClock
    from gateway.runtime import Runtime


def judge(g: CompiledGuard, result: Classification, where: str) -> tuple[str, list[str],
                                                                         str | None]:
    """(verdict, labels, why the text is refused or None) for a classifier's answer about a
    `where` (`prompt`, `reply`)."""
    assert g.model is not None
    if result.unsafe is None:
        if g.model.on_error == "fail_open":
            return "fail_open", ["classifier_error"], None
        return "fail_closed", ["classifier_error"], unchecked(where)
    if result.unsafe:
        if g.action == "block":
            return "block", list(result.categories), CONTENT
        return "flag", list(result.categories), None
    return "pass", list(result.categories), None


async def ask(rt: Runtime, g: CompiledGuard, text: str, record: RequestRecord,
              clock: VerdictClock, where: str, *,
              into: list[AttemptRecord] | None = None, repeat: bool = False) -> str | None:
    """Classify `text` and record the verdict on `clock`; the refusal reason, or None to let
    the text through. `repeat`: one of several calls on one check (a stream's segments): the
    entry keeps the gravest verdict and adds this call's time."""
    assert g.model is not None
    if not text.strip():  # nothing to judge (a tool call's reply, token-id input): no call
        if not repeat:
            clock.done("pass")
        return None
    t0 = time.perf_counter()
    result = await classify(rt, g.model, text, record, into)
    verdict, labels, why = judge(g, result, where)
    if repeat:
        clock.worse(verdict, labels)
        clock.add_time(time.perf_counter() - t0)
    else:
        clock.done(verdict, labels)
    return why
