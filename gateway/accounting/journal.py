"""The journal: every request's record on local disk before its response completes.

The ledger writer ships records to the database in batches, off the request path; until a
batch commits, a record lives only in this process's memory, and `kill -9` (an OOM kill, a
lost node) would lose answered requests. So the request path appends each record here first —
one JSON line (the spill file's format) copied into the OS page cache, which survives the
death of the process — and only then sends the response's last byte.

- Segments are memory-mapped files (`MAP_SHARED`, their blocks allocated up front): an append
  is a copy into the page cache — no system call on the request path — and the kernel
  keeps, and writes back, a dying process's dirty pages as it does a `write()`'s.
- An admitted request is journaled twice: a marker at admission (the record as it would read
  if the gateway died now: status 500, `gateway_interrupted`), and its final record when it
  ends. The last line for a request id wins, so a process killed mid-request still leaves a
  record. Markers are buffered and written once per event-loop tick (many admissions, one
  write); a final record is written at once, with any markers still buffered.
- Segments: lines go to `journal-<process>-<seq>.jsonl`, rotated by size and age. A segment
  is deleted once it is no longer written to and every request with a line in it is in the
  database or the spill file (the writer reports that through `done`). Each segment is held
  with an exclusive `flock` while its process lives, so start-up recovers only the segments
  of dead processes, even with several processes sharing the folder.
- Durability: a page-cache copy survives a process kill. A machine crash can lose what the
  OS had not written back; `sync()` (fsync, run by the writer thread every `journal_fsync_s`)
  bounds that window (docs/accounting.md).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import mmap
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic_core import from_json, to_json

from gateway.accounting.ledger_rows import from_json as record_from_json
from gateway.accounting.ledger_rows import to_json as record_to_json
from gateway.accounting.records import RequestRecord

log = logging.getLogger(__name__)

SEGMENT_BYTES = 1024 * 1024  # mapped and allocated per segment: bounds its resident pages
SEGMENT_AGE_S = 30.0
# MAP_POPULATE (Linux) maps every page of a new segment at once, so appends never fault.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    fd: int
    map: mmap.mmap
    opened: float
    size: int = 0
    # Requests with a line here that are not yet stored or spilled.
    pending: set[str] = field(default_factory=set)
    closed: bool = False


class Journal:
    def __init__(self, folder: str | os.PathLike[str], *,
                 segment_bytes: int = SEGMENT_BYTES, segment_age_s: float = SEGMENT_AGE_S
                 ) -> None:
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        # pid + start time: unique per process even when pids are reused across restarts.
        self._prefix = f"journal-{os.getpid()}-{time.time_ns():x}"
        self._seq = 0
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        self._closed_segments: list[_Segment] = []
        self._markers: dict[str, bytes] = {}
        self._flush_scheduled = False
        self.write_errors = 0
        self._last_error_log = -60.0

    # -- the request side (event loop) ------------------------------------------------------

    def mark(self, rec: RequestRecord) -> None:
        """Journal the record as it stands (admission: the marker), written within this
        event-loop tick. Never raises."""
        self._markers[rec.request_id] = _line(rec)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (tools, tests): write now
                self.flush()

    def append(self, rec: RequestRecord) -> None:
        """Journal the final record now, with any markers still buffered (one copy).
        Never raises: a failed write is logged and counted, and the writer still has the
        record in memory."""
        self._markers.pop(rec.request_id, None)
        self._write([(rec.request_id, _line(rec))])

    def flush(self) -> None:
        """Write buffered markers."""
        self._flush_scheduled = False
        if self._markers:
            items = list(self._markers.items())
            self._markers.clear()
            self._write(items)

    def _write(self, items: list[tuple[str, bytes]]) -> None:
        if self._markers:
            items = [*self._markers.items(), *items]
            self._markers.clear()
        data = items[0][1] if len(items) == 1 else b"".join([line for _, line in items])
        n = len(data)
        try:
            with self._lock:
                seg = self._segment(n)
                start = seg.size
                seg.map[start:start + n] = data
                seg.size = start + n
                pending = seg.pending
                for rid, _ in items:
                    pending.add(rid)
        except (OSError, ValueError) as e:
            self.write_errors += len(items)
            now = time.monotonic()
            if now - self._last_error_log >= 60.0:  # once a minute, not once per request
                self._last_error_log = now
                log.error("journal %s: write failed (%s); records are only in memory until "
                          "the ledger takes them (%d so far)", self.folder, e,
                          self.write_errors)

    def _segment(self, incoming: int) -> _Segment:
        seg = self._current
        now = time.monotonic()
        if seg is not None and (seg.size + incoming > len(seg.map)
                                or (seg.size and now - seg.opened > self.segment_age_s)):
            self._retire(seg)
            self._current = seg = None
            self._reap()
        if seg is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            path = self.folder / f"{self._prefix}-{self._seq:08d}.jsonl"
            size = max(self.segment_bytes, incoming + mmap.PAGESIZE)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Allocated now, so a full disk is an error here, never a SIGBUS when a page
                # of the mapping is first written.
                os.posix_fallocate(fd, 0, size)
                mapped = mmap.mmap(fd, size, flags=_MAP_FLAGS)
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            seg = self._current = _Segment(self._seq, path, fd, mapped, now)
        return seg

    def _retire(self, seg: _Segment) -> None:
        """No more lines go to `seg`: unmap it and cut the unused tail (under the lock)."""
        seg.closed = True
        seg.map.close()
        try:
            os.ftruncate(seg.fd, seg.size)
        finally:
            os.close(seg.fd)
        self._closed_segments.append(seg)

    # -- the writer side (its thread) ---------------------------------------------------------

    def done(self, records: list[RequestRecord]) -> None:
        """These records are stored or spilled: their journal lines are no longer needed."""
        ids = [r.request_id for r in records]
        with self._lock:
            for seg in (*self._closed_segments, *([self._current] if self._current else [])):
                if seg.pending:
                    seg.pending.difference_update(ids)
            self._reap()

    def _reap(self) -> None:
        """Delete rotated segments nothing needs any more (under the lock)."""
        keep = []
        for seg in self._closed_segments:
            if seg.pending:
                keep.append(seg)
                continue
            try:
                seg.path.unlink()
            except OSError as e:
                log.warning("journal: could not delete %s: %s", seg.path, e)
        self._closed_segments = keep

    def sync(self) -> None:
        """fsync the segment being written (bounds what a machine crash can lose)."""
        with self._lock:
            seg = self._current
            fd = os.dup(seg.fd) if seg is not None and seg.size else None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            log.warning("journal fsync failed: %s", e)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Shutdown, after the writer stored or spilled everything: remove what is done. The
        journal stays usable: a request that ends later (after the writer stopped) is still
        journaled before it is spilled, in a new segment that the next start recovers."""
        self.flush()
        with self._lock:
            seg = self._current
            if seg is not None and not seg.pending:
                self._retire(seg)
                self._current = None
            self._reap()
            left = sum(len(s.pending) for s in self._closed_segments)
            if self._current is not None:
                left += len(self._current.pending)
        if left:
            log.warning("journal: %d record(s) not confirmed stored at shutdown stay in %s "
                        "and are replayed at the next start", left, self.folder)

    @property
    def segments(self) -> int:
        """Segment files this process still holds (tests, metrics)."""
        with self._lock:
            return len(self._closed_segments) + (self._current is not None)


def recover(folder: str | os.PathLike[str]) -> Iterator[tuple[list[Path], list[RequestRecord]]]:
    """What processes that died left behind, one process at a time: (its segment files, its
    records with the last line per request id winning — a marker in one segment may be
    superseded by the final record in a later one). The files stay locked while the caller
    stores or spills the records; it then calls `discard(paths)`. Segments of live processes
    are skipped (their lock is held), and so are segments another process is recovering.
    """
    base = Path(folder)
    if not base.is_dir():
        return
    groups: dict[str, list[Path]] = {}
    for path in sorted(base.glob("journal-*.jsonl"), key=_order):
        groups.setdefault(_order(path)[0], []).append(path)
    for paths in groups.values():
        fds: list[int] = []
        try:
            held: list[Path] = []
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # recovered by another process meanwhile
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held = []
                    break  # its process is alive, or another one is recovering it
                if path.exists():
                    held.append(path)
            if held:
                yield held, _read(held)
        finally:
            for fd in fds:
                os.close(fd)


def discard(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _order(path: Path) -> tuple[str, int]:
    stem, _, seq = path.stem.rpartition("-")
    return stem, int(seq) if seq.isdigit() else 0


def _read(paths: list[Path]) -> list[RequestRecord]:
    latest: dict[str, RequestRecord] = {}
    for path in paths:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                # A segment its process never closed ends in the mapping's unused, zeroed
                # tail; a line cut short there by the process dying fails to parse below.
                line = line.strip(b"\x00 \t\r\n")
                if not line:
                    continue
                try:
                    rec = record_from_json(from_json(line))
                except (ValueError, KeyError, TypeError) as e:
                    # A torn last line: the process died mid-copy. Nothing else is lost
                    # this way: every earlier line was whole.
                    log.error("journal %s line %d unreadable, skipped: %s", path, lineno, e)
                    continue
                latest.pop(rec.request_id, None)
                latest[rec.request_id] = rec
    return list(latest.values())


def _line(rec: RequestRecord) -> bytes:
    return to_json(record_to_json(rec)) + b"\n"
