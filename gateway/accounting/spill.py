"""The spill file: records the database could not take, one JSON object per line.

Append-only while the database is down; replayed in batches when it returns, then truncated.
Replay is safe to repeat (the ledger ignores request ids it already has), so a crash halfway
through a replay only means some records are offered twice — never counted twice.

One writer thread owns a spill file; give each replica its own path (e.g. with the pod name).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.accounting.ledger_rows import from_json, to_json
from gateway.accounting.records import RequestRecord

log = logging.getLogger(__name__)


class SpillFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.corrupt_lines = 0

    def append(self, records: Sequence[RequestRecord]) -> None:
        """Append records durably (one write, flushed and fsynced: they exist nowhere else)."""
        if not records:
            return
        data = "".join(
            json.dumps(to_json(r), separators=(",", ":"), ensure_ascii=False) + "\n"
            for r in records
        ).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def batches(self, size: int) -> Iterator[list[RequestRecord]]:
        """Records in the file, ``size`` at a time. A torn last line (a crash mid-append) or
        any unparsable line is logged, counted and skipped."""
        if not self.pending():
            return
        batch: list[RequestRecord] = []
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    batch.append(from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as e:
                    self.corrupt_lines += 1
                    log.error("spill file %s line %d unreadable, skipped: %s", self.path, lineno, e)
                    continue
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def count(self) -> int:
        """Number of non-empty lines (tests, operators)."""
        if not self.pending():
            return 0
        with self.path.open("rb") as f:
            return sum(1 for line in f if line.strip())

    def clear(self) -> None:
        """Empty the file after a complete replay."""
        if self.path.exists():
            with self.path.open("r+b") as f:
                f.truncate(0)
                os.fsync(f.fileno())
