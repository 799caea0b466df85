"""When the request stages journal the admission marker (`RequestStages.before`): before the
first `before` that may suspend, and before the request goes upstream — never for a hit
answered without suspending, whose final record is the only line the journal needs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.stages import answer as answer_module
from gateway.stages.base import Answer, Blocked, StageRun
from gateway.stages.pipeline import RequestStages


class _Run(StageRun):
    def __init__(self, log: list[str], name: str, *, sync: bool, answer: bool = False,
                 block: bool = False) -> None:
        self.log, self.name, self.answer, self.block = log, name, answer, block
        self.never_suspends = sync

    async def before(self) -> Answer | None:
        self.log.append(self.name)
        if self.block:
            raise Blocked(self.name)
        if self.answer:
            return Answer({}, None, "d", "p", "m")
        return None


def _before(monkeypatch: pytest.MonkeyPatch, *runs: tuple[str, bool, dict[str, Any]]
            ) -> tuple[list[str], Any]:
    log: list[str] = []

    async def reply_with(stages: RequestStages, *_: Any) -> str:
        log.append("answered")
        return "reply"

    monkeypatch.setattr(answer_module, "reply_with", reply_with)
    ctx = SimpleNamespace(response_headers={})
    stages = RequestStages(ctx, [(n, _Run(log, n, sync=s, **kw))  # type: ignore[arg-type]
                                 for n, s, kw in runs])

    async def go() -> Any:
        return await stages.before(None, None, None, 0.0, None,  # type: ignore[arg-type]
                                   lambda: log.append("marker"))
    try:
        return log, asyncio.run(go())
    except Blocked as e:
        return log, e


def test_a_synchronous_hit_is_never_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    log, out = _before(monkeypatch, ("guard", True, {}), ("cache", True, {"answer": True}))
    assert out == "reply" and log == ["guard", "cache", "answered"]


def test_a_run_that_may_suspend_is_preceded_by_the_marker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A Redis lookup (or a classifier guard) awaits I/O: the marker is journaled first, once.
    log, out = _before(monkeypatch, ("guard", False, {}), ("cache", False, {"answer": True}))
    assert out == "reply" and log == ["marker", "guard", "cache", "answered"]
    log, _ = _before(monkeypatch, ("guard", True, {}), ("cache", False, {"answer": True}))
    assert log == ["guard", "marker", "cache", "answered"]


def test_a_request_going_upstream_is_always_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    log, out = _before(monkeypatch, ("guard", True, {}), ("cache", True, {}))
    assert out is None and log == ["guard", "cache", "marker"]


def test_a_block_before_the_marker_leaves_it_to_the_final_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The refusal closes the record (journaled then): no marker is needed, none is written.
    log, out = _before(monkeypatch, ("guard", True, {"block": True}), ("cache", True, {}))
    assert isinstance(out, Blocked) and log == ["guard"]


def test_mark_runs_once_and_is_a_no_op_without_a_journal() -> None:
    calls: list[int] = []
    stages = RequestStages(SimpleNamespace(response_headers={}), [])  # type: ignore[arg-type]
    stages.mark()  # before `before`: nothing to mark
    stages._mark = lambda: calls.append(1)
    stages.mark()
    stages.mark()
    assert calls == [1]
