"""LedgerWriter: records go in without waiting; a thread writes them in batches.

``record()`` is a lock-free queue put, safe from the event loop and any thread. The writer
thread takes up to ``batch_size`` records, or whatever arrived within ``flush_interval_s`` of
the first, and writes them in one transaction. When the database cannot take them they go to
the spill file; while it stays down, later batches go straight there (one probe per backoff
step, 0.5 s doubling to ``retry_max_s``). When a write succeeds again the spill file is
replayed — the ledger ignores request ids it already has, so a replay never double-counts.

A record the database rejects for itself (not for being down) would block a replay forever;
it is set aside in ``<spill_path>.rejected`` (same JSON lines), logged and counted.

With a journal (`journal.py`), the request path has already put each record on local disk
before this writer sees it: once a batch is stored or spilled, the writer tells the journal it
is done with those records, and every ``fsync_s`` it fsyncs the journal. At start-up,
``recover()`` ships what dead processes left in the journal, before the thread starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.accounting import journal as journal_files
from gateway.accounting.journal import Journal
from gateway.accounting.ledger import Ledger, LedgerUnavailable, open_ledger, redact
from gateway.accounting.ledger_rows import to_json
from gateway.accounting.records import RequestRecord
from gateway.accounting.spill import SpillFile
from gateway.policy.models import Ledger as LedgerConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WriterStats:
    """Counters for metrics (read them; only the writer thread changes them)."""

    enqueued: int = 0
    written: int = 0  # newly stored
    duplicates: int = 0  # offered again and ignored (replays)
    spilled: int = 0
    replayed: int = 0
    rejected: int = 0
    lost: int = 0  # neither stored nor spilled (the spill file itself failed)
    db_failures: int = 0
    batches: int = 0
    recovered: int = 0  # records shipped from dead processes' journals at start-up


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class LedgerWriter:
    def __init__(
        self,
        ledger: Ledger,
        spill_path: str | Path,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.005,
        retry_max_s: float = 10.0,
        journal: Journal | None = None,
        fsync_s: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.spill = SpillFile(spill_path)
        self.journal = journal
        self.fsync_s = fsync_s
        self._synced_at = time.monotonic()
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_max_s = retry_max_s
        self.stats = WriterStats()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._closed = False
        self._late = threading.Lock()
        self._retry_at = 0.0  # monotonic time before which the database is not tried
        self._backoff = 0.5
        self._connected = False
        self._has_spill = self.spill.pending()
        self._urgent = threading.Event()  # set by flush/close: stop waiting for a batch

    @classmethod
    def from_policy(cls, cfg: LedgerConfig) -> LedgerWriter:
        journal = Journal(cfg.journal_folder) if cfg.journal else None
        return cls(open_ledger(cfg.url, cfg.schema_name), cfg.spill_path,
                   batch_size=cfg.batch_size, flush_interval_s=cfg.flush_interval_s,
                   journal=journal, fsync_s=cfg.journal_fsync_s)

    def recover(self) -> int:
        """Store (or spill) what dead processes left in the journal folder; returns how many
        records. Call before `start()`, and before budgets are rebuilt from the ledger."""
        if self.journal is None:
            return 0
        n = 0
        for paths, records in journal_files.recover(self.journal.folder):
            kept = True
            for i in range(0, len(records), self.batch_size):
                kept = self._write(records[i : i + self.batch_size]) and kept
            if kept:
                journal_files.discard(paths)
            n += len(records)
            log.info("ledger: recovered %d record(s) from %d journal segment(s) of a process "
                     "that stopped without shutting down", len(records), len(paths))
        self.stats.recovered += n
        return n

    # -- the request side ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def record(self, rec: RequestRecord) -> None:
        """Queue a record for writing; never blocks, never raises."""
        if self._closed:
            # A request that ends after shutdown began: the writer thread is gone, so keep
            # the record the only way left — straight into the spill file.
            with self._late:
                if self._spill([rec]) and self.journal is not None:
                    self.journal.done([rec])
            return
        self.stats.enqueued += 1
        self._q.put(rec)

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued before this call is written or spilled."""
        if not self._thread.is_alive():
            return False
        marker = _Flush()
        self._q.put(marker)
        self._urgent.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write (or spill) everything queued, replay the spill if possible, close the DB."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._urgent.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._spill_queue()
        else:
            self._drain_unstarted()
        if self.journal is not None:
            self.journal.close()

    def _spill_queue(self) -> None:
        # The writer is stuck (a database hanging mid-write) past the shutdown timeout, and
        # the process is about to exit with the daemon thread: spill what is still queued.
        # Should the stuck batch commit after all, replay will ignore it — ids are unique.
        left = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, RequestRecord):
                left.append(item)
        log.warning("ledger writer still busy at shutdown; spilling %d queued records",
                    len(left))
        if left:
            with self._late:
                if self._spill(left) and self.journal is not None:
                    self.journal.done(left)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        self._replay()  # whatever a previous process left behind
        while True:
            try:
                item = self._q.get(timeout=self.flush_interval_s)
            except queue.Empty:
                item = None
            batch: list[RequestRecord] = []
            if isinstance(item, RequestRecord):
                batch.append(item)
                # Let the batch fill without waking up for each record (every wake-up is a
                # GIL handoff with the event loop): wait on the flush signal, not the queue.
                if self._q.qsize() < self.batch_size:
                    self._urgent.wait(self.flush_interval_s)
                self._urgent.clear()
                item = None
                while len(batch) < self.batch_size:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, RequestRecord):
                        batch.append(nxt)
                    else:
                        item = nxt
                        break
            if item is _STOP or isinstance(item, _Flush):
                self._retry_at = 0.0  # an explicit flush tries the database now
            self._sync_journal()
            try:
                self._write(batch)
                if item is not None and not isinstance(item, RequestRecord):
                    self._replay()
                elif item is None and self._has_spill:
                    self._replay()
            except Exception:  # a bug here must not stop the thread and strand the queue
                log.exception("ledger writer failed on a batch of %d", len(batch))
                self._spill(batch)
            if isinstance(item, _Flush):
                item.done.set()
            elif item is _STOP:
                self._finish()
                return

    def _sync_journal(self) -> None:
        if self.journal is not None and time.monotonic() - self._synced_at >= self.fsync_s:
            self._synced_at = time.monotonic()
            self.journal.sync()

    def _finish(self) -> None:
        # A record() racing close() may have queued behind the stop marker.
        late: list[RequestRecord] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, RequestRecord):
                late.append(item)
            elif isinstance(item, _Flush):
                item.done.set()
        for i in range(0, len(late), self.batch_size):
            self._write(late[i : i + self.batch_size])
        try:
            self.ledger.close()
        except Exception:
            log.exception("closing ledger %s", redact(self.ledger.url))

    def _drain_unstarted(self) -> None:
        # close() without start(): do the thread's work inline so nothing queued is lost.
        self._q.put(_STOP)
        self._run()

    def _ready(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        if not self._connected:
            try:
                self.ledger.connect()
                self._connected = True
            except LedgerUnavailable as e:
                self._down(e)
                return False
        return True

    def _down(self, e: Exception) -> None:
        self.stats.db_failures += 1
        if self._retry_at == 0.0:  # up → down: say it once, not once per probe
            log.warning("ledger %s unavailable, spilling to %s: %s",
                        redact(self.ledger.url), self.spill.path, e)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    def _up(self) -> None:
        if self._retry_at:
            log.info("ledger %s reachable again", redact(self.ledger.url))
        self._retry_at = 0.0
        self._backoff = 0.5

    def _write(self, batch: list[RequestRecord]) -> bool:
        """Store a batch, or spill what the database did not take. False when some record is
        neither (the spill file failed): then the journal keeps it."""
        if not batch:
            return True
        self.stats.batches += 1
        left = self._store(batch)
        kept = True
        if left:
            kept = self._spill(left)
        elif self._has_spill:
            self._replay()
        if kept and self.journal is not None:
            self.journal.done(batch)
        return kept

    def _store(self, batch: list[RequestRecord]) -> list[RequestRecord]:
        """Write to the database; returns the records it could not take for being down."""
        if not self._ready():
            return batch
        try:
            n = self.ledger.write(batch)
        except LedgerUnavailable as e:
            self._down(e)
            return batch
        except Exception:
            return self._store_singly(batch)
        self._up()
        self.stats.written += n
        self.stats.duplicates += len(batch) - n
        return []

    def _store_singly(self, batch: list[RequestRecord]) -> list[RequestRecord]:
        # Some record in the batch is bad: store the others one by one, set the bad aside.
        for i, rec in enumerate(batch):
            try:
                n = self.ledger.write([rec])
            except LedgerUnavailable as e:
                self._down(e)
                return batch[i:]
            except Exception as e:
                self._reject(rec, e)
                continue
            self.stats.written += n
            self.stats.duplicates += 1 - n
        self._up()
        return []

    def _reject(self, rec: RequestRecord, e: Exception) -> None:
        self.stats.rejected += 1
        log.error("ledger rejected record %s (%s); kept in %s.rejected",
                  rec.request_id, type(e).__name__, self.spill.path)
        try:
            path = Path(f"{self.spill.path}.rejected")
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(to_json(rec), ensure_ascii=False) + "\n")
        except Exception:
            self.stats.lost += 1
            log.exception("could not keep rejected record %s", rec.request_id)

    def _spill(self, batch: list[RequestRecord]) -> bool:
        try:
            self.spill.append(batch)
            self.stats.spilled += len(batch)
            self._has_spill = True
            return True
        except Exception:
            self.stats.lost += len(batch)
            log.exception("spill file %s failed: %d ledger records not kept there%s",
                          self.spill.path, len(batch),
                          " (the journal keeps them)" if self.journal is not None else "")
            return False

    def _replay(self) -> None:
        """Offer the spill file to the database; empty it once all of it was taken.

        Stops at the first batch the database cannot take (the file stays as it is; what was
        already stored will simply be ignored next time).
        """
        if not self._has_spill or not self._ready():
            return
        before, n = self.stats.written, 0
        for batch in self.spill.batches(self.batch_size):
            if self._store(batch):
                log.warning("ledger replay interrupted after %d records", n)
                return
            n += len(batch)
        self.spill.clear()
        self._has_spill = False
        self.stats.replayed += n
        log.info("ledger replayed %d spilled records (%d new)", n, self.stats.written - before)
