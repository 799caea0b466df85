"""The journal: records on disk before the response completes, recovered from dead processes
only, the last line per request winning, segments deleted once the ledger has them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.accounting import journal as jf
from gateway.accounting.journal import Journal
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage

ROOT = Path(__file__).resolve().parents[3]


def rec(rid: str, status: int = 200, code: str | None = None) -> RequestRecord:
    r = RequestRecord(rid, datetime.now(UTC), "acme", "k1", "gpt", "chat", False, status, 3.0,
                      error_code=code, client_request_id="client-" + rid)
    if status == 200:
        r.attempts.append(AttemptRecord("oa/m", "oa", "m", "ok", 200, Usage(5, 0, 0, 7), 2.0))
    return r


def die_after(folder: Path, script: str) -> None:
    """Run `script` with a Journal `j` on `folder` in another process that then dies without
    closing anything (os._exit: no cleanup, as after kill -9)."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.unit.accounting.test_journal import rec
        from gateway.accounting.journal import Journal
        j = Journal({str(folder)!r}, segment_bytes=600)
    """) + textwrap.dedent(script) + "\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def recovered(folder: Path) -> dict[str, RequestRecord]:
    out: dict[str, RequestRecord] = {}
    for paths, records in jf.recover(folder):
        out.update({r.request_id: r for r in records})
        jf.discard(paths)
    return out


def test_a_dead_process_leaves_every_record_the_last_line_winning(tmp_path: Path) -> None:
    die_after(tmp_path, """
        for i in range(20):
            j.mark(rec(f"r{i}", 500, "gateway_interrupted"))  # admitted
        for i in range(15):
            j.append(rec(f"r{i}"))                           # answered
    """)
    assert len(list(tmp_path.glob("journal-*.jsonl"))) > 1  # it rotated: lines span segments
    got = recovered(tmp_path)
    assert len(got) == 20
    assert all(got[f"r{i}"].status == 200 for i in range(15))
    assert all(got[f"r{i}"].error_code == "gateway_interrupted" for i in range(15, 20))
    assert got["r3"].attempts[0].usage == Usage(5, 0, 0, 7)
    assert got["r3"].client_request_id == "client-r3"
    assert list(tmp_path.glob("journal-*.jsonl")) == []  # discarded once handed over


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    die_after(tmp_path, """
        j.append(rec("whole"))
        seg = j._current  # the process dies halfway through copying a line
        seg.map[seg.size:seg.size + 30] = b'{"request_id": "torn", "ts": "'
    """)
    assert set(recovered(tmp_path)) == {"whole"}


def test_a_live_process_keeps_its_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append(rec("mine"))
    assert recovered(tmp_path) == {}  # locked by this (live) journal
    assert j.segments == 1
    j.done([rec("mine")])
    j.close()
    assert list(tmp_path.glob("journal-*.jsonl")) == []


def test_a_segment_is_deleted_only_when_all_its_requests_are_stored(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=600)
    j.mark(rec("slow", 500, "gateway_interrupted"))  # admitted; still running
    j.flush()
    for i in range(10):
        j.append(rec(f"r{i}"))
    j.done([rec(f"r{i}") for i in range(10)])
    # The first segment holds the running request's marker: it stays.
    first = sorted(tmp_path.glob("journal-*.jsonl"))[0]
    assert first.exists()
    j.append(rec("slow"))  # it ends (in a later segment)
    j.done([rec("slow")])
    for _ in range(3):  # rotate past the current segment
        j.append(rec("x"))
    j.done([rec("x")])
    assert not first.exists()
    j.close()


def test_markers_are_written_in_one_write_with_the_next_final(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.mark(rec("a", 500, "gateway_interrupted"))  # no running loop: written at once
    j.append(rec("b"))
    (seg,) = tmp_path.glob("journal-*.jsonl")
    assert seg.read_bytes().count(b"\n") == 2
    j.done([rec("a"), rec("b")])
    j.close()


def test_a_journal_that_cannot_write_never_raises_into_the_request_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full or read-only disk: records stay in memory for the ledger, errors are counted
    and logged once a minute, not once per request."""
    import logging

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    j = Journal(blocker / "journal")
    with caplog.at_level(logging.ERROR, logger="gateway.accounting.journal"):
        for i in range(5):
            j.mark(rec(f"m{i}", 500, "gateway_interrupted"))
            j.append(rec(f"r{i}"))
    assert j.write_errors == 10
    assert sum("write failed" in r.getMessage() for r in caplog.records) == 1
    j.done([rec("r0")])
    j.close()
