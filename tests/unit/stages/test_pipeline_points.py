"""The pipeline calls a run's `attempt` / `reply` / `stream` only where the run has work there:
by default where its class overrides them; a run may say otherwise for its request."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.stages.base import ReplyInfo, StageRun
from gateway.stages.pipeline import RequestStages


class _Attempts(StageRun):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def attempt(self, target: Any) -> None:
        self.log.append("attempt")


class _Replies(StageRun):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def reply(self, body: bytes, info: ReplyInfo) -> bytes:
        self.log.append("reply")
        return body + b"!"


def _stages(*runs: StageRun) -> RequestStages:
    record = SimpleNamespace(attempts=[])
    ctx = SimpleNamespace(response_headers={}, record=record,
                          call=SimpleNamespace(ingress="openai", endpoint="chat"))
    return RequestStages(ctx, [(type(r).__name__, r) for r in runs])  # type: ignore[arg-type]


def test_the_defaults_follow_what_a_run_class_overrides() -> None:
    assert _Attempts.checks_attempts and not _Attempts.checks_replies
    assert _Replies.checks_replies and not _Replies.checks_attempts
    assert not StageRun.checks_attempts and not StageRun.checks_replies


def test_only_the_runs_with_work_at_a_point_are_called() -> None:
    log: list[str] = []
    stages = _stages(_Attempts(log), _Replies(log))
    assert stages.attempting
    asyncio.run(stages.attempt(SimpleNamespace()))
    out = asyncio.run(stages.reply(b"x", SimpleNamespace(), False))  # type: ignore[arg-type]
    assert out == b"x!" and log == ["attempt", "reply"]
    assert not _stages(_Replies(log)).attempting


def test_a_run_may_say_it_has_no_work_for_its_request() -> None:
    log: list[str] = []
    quiet = _Attempts(log)
    quiet.checks_attempts = False
    stages = _stages(quiet)
    assert not stages.attempting
    asyncio.run(stages.attempt(SimpleNamespace()))
    assert log == []
