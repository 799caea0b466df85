"""`length` and `model` guards on a whole (non-stream) reply.

Both read the reply's text as the client would get it (after any redaction by guards listed
before them). A `length` guard counts its characters, and its tokens as the upstream
reported them (characters / 4 when it did not). A `model` guard asks its classifier once
about the whole text; its attempts go into the record *before* the serving attempt, which
stays the last one (the attempt that answered, for the ledger's `deployment`, metrics and
rollouts). A block is a 400 naming the guard; the reply's tokens are billed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from gateway.guards.model_check import ask
from gateway.guards.refusal import TOO_LONG, blocked
from gateway.guards.stream_checks import CHARS_PER_TOKEN
from gateway.guards.text import texts
from gateway.guards.verdicts import VerdictClock

if TYPE_CHECKING:
    from gateway.accounting.records import AttemptRecord, RequestRecord
    from gateway.guards.compiled import CompiledGuard
    from gateway.runtime import Runtime
    from gateway.stages.base import ReplyInfo


def reply_too_long(g: CompiledGuard, parts: list[str], info: ReplyInfo) -> bool:
    d = g.length
    assert d is not None
    chars = sum(len(t) for t in parts)
    if d.max_chars is not None and chars > d.max_chars:
        return True
    if d.max_tokens is not None:
        usage = info.usage
        tokens = usage.completion_tokens if usage is not None \
            else math.ceil(chars / CHARS_PER_TOKEN)
        return tokens > d.max_tokens
    return False


async def check_reply(rt: Runtime, record: RequestRecord, g: CompiledGuard, obj: Any,
                      info: ReplyInfo) -> None:
    parts = texts(obj)
    clock = VerdictClock(record, g.name, "output")
    if g.length is not None:
        over = reply_too_long(g, parts, info)
        clock.done(("block" if g.action == "block" else "flag") if over else "pass",
                   ["length"] if over else [])
        if over and g.action == "block":
            raise blocked(g, "reply", TOO_LONG)
        return
    extra: list[AttemptRecord] = []
    try:
        why = await ask(rt, g, "\n".join(parts), record, clock, "reply", into=extra)
    finally:
        record.attempts[-1:-1] = extra  # before the serving attempt, which stays last
    if why is not None:
        raise blocked(g, "reply", why)
