"""Settle a finished request: usage (estimated where missing), cost, limits, ledger record.

The proxy settles each request exactly once, however it ended, in two parts:
- before the response's last byte: ``estimate`` (only when a provider reported no usage) and
  ``seal`` — price the record and put it in the journal, so a process killed after
  answering still has it on disk (journal.py);
- after, as a task the client never waits on: ``finish`` — settle the limiter's reservation
  with the actual usage, queue the record for the ledger, update metrics (``finish_now``
  does the same without awaiting, for a limiter that settles in memory: a callback then,
  not a task).
``settle`` does all of it in one call (tools, tests). Nothing here raises into the request
path: each step is guarded, a failure is logged and counted in ``failures``, and the record is
queued for the ledger in every case — a request without a record is the one thing finance
must never see.

Which attempts are billed (docs/accounting.md, "per-attempt billing"):
- every attempt with usage is priced on its own deployment, fallbacks included;
- an attempt without usage is estimated only if something was generated for it: outcomes
  ``ok``, ``failed_midstream``, ``cancelled``, ``drained``. An ``error`` attempt (failed
  before any byte reached the client) without usage costs nothing: providers do not bill a
  refused or failed call, and guessing would charge tenants for our fallbacks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from gateway.accounting.estimate import count_prompt_tokens, count_text_tokens
from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.pricing import ZERO, PriceBook
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.reports import Report, run_report, tenant_spend
from gateway.accounting.usage import Usage
from gateway.accounting.writer import LedgerWriter
from gateway.limits.base import Limiter, Reservation
from gateway.policy.models import Policy

log = logging.getLogger(__name__)

_GENERATED = frozenset({"ok", "failed_midstream", "cancelled", "drained", "blocked"})


class Settler:
    def __init__(
        self,
        policy: Policy,
        price_book: PriceBook,
        ledger_writer: LedgerWriter,
        limiter: Limiter | None = None,
        *,
        metrics: Any = None,
    ) -> None:
        self.policy = policy
        self.price_book = price_book
        self.ledger_writer = ledger_writer
        self.limiter = limiter
        # gateway.observability.metrics.Metrics, or None (tests, tools).
        self.metrics = metrics
        # Step name → failures; also logged with the request id.
        self.failures: Counter[str] = Counter()
        self.settled = 0
        self._spilled_seen = 0
        # Told of every settled record, after the limiter and the ledger queue (alerts:
        # a 402 may report an exhausted budget). Each must be quick and not raise.
        self.listeners: list[Callable[[RequestRecord], None]] = []

    @classmethod
    def from_policy(
        cls, policy: Policy, limiter: Limiter | None = None, metrics: Any = None
    ) -> Settler:
        return cls(policy, PriceBook(policy), LedgerWriter.from_policy(policy.ledger), limiter,
                   metrics=metrics)

    async def start(self) -> None:
        """Ship what a dead process left in the journal, start the ledger writer thread, and
        restore budget spend from the ledger (app lifespan) — in that order, so budgets count
        the recovered requests. A ledger that cannot be read only means budgets start from
        zero."""
        try:
            await asyncio.to_thread(self.ledger_writer.recover)
        except Exception:
            log.exception("journal recovery failed; its segments stay for the next start")
        self.ledger_writer.start()
        restore = getattr(self.limiter, "restore_spend", None)  # optional limiter capability
        if restore is None:
            return
        try:
            spent = await asyncio.to_thread(self._read_spend)
            await restore(spent)
        except Exception:
            log.warning("could not restore budget spend from the ledger; budgets start at "
                        "zero for this replica", exc_info=True)

    def _read_spend(self) -> dict[str, tuple[Decimal, Decimal]]:
        cfg = self.policy.ledger
        ledger = open_ledger(cfg.url, cfg.schema_name)
        try:
            ledger.connect()
            return tenant_spend(ledger, datetime.now(UTC))
        finally:
            ledger.close()

    async def close(self) -> None:
        """Flush every queued record to the ledger (or the spill file) and stop the writer."""
        await self.ledger_writer.aclose()
        self.observe()

    def update(self, policy: Policy, price_book: PriceBook | None = None) -> None:
        """Swap in a reloaded policy: requests settling from now on use its prices.
        (The ledger location is read once at start; changing it needs a restart.)"""
        self.policy, self.price_book = policy, price_book or PriceBook(policy)

    async def settle(
        self,
        reservation: Reservation | None,
        record: RequestRecord,
        *,
        body: Mapping[str, Any] | None = None,
        completion_text: str | None = None,
    ) -> None:
        """Estimate, price, journal, settle limits and queue the record. Never raises.

        For an attempt that reported no usage, the prompt is counted from ``body`` (the
        OpenAI-shaped request) with the tokenizer, or else taken from the admission estimate;
        the output from ``completion_text`` (what the client received), or else from the
        attempt's ``streamed_chunks`` (about one token per SSE content chunk).
        """
        await self.estimate(reservation, record, body, completion_text)
        self.seal(record)
        await self.finish(reservation, record)

    def admitted(self, record: RequestRecord) -> None:
        """Journal the admitted request's marker (what the ledger gets if the process dies
        before the request ends)."""
        journal = self.ledger_writer.journal
        if journal is not None:
            journal.mark(record)

    def needs_estimate(self, record: RequestRecord) -> bool:
        return self.policy.accounting.estimate_missing_usage and any(
            a.usage is None and a.outcome in _GENERATED for a in record.attempts)

    async def estimate(self, reservation: Reservation | None, record: RequestRecord,
                       body: Mapping[str, Any] | None = None,
                       completion_text: str | None = None) -> None:
        """Fill in usage the provider did not report. Never raises."""
        try:
            if self.needs_estimate(record):
                # Tokenizing a long prompt takes milliseconds: keep it off the event loop.
                await asyncio.to_thread(
                    self._estimate, reservation, record, body, completion_text
                )
        except Exception:
            self._failed("estimate", record)

    def seal(self, record: RequestRecord) -> None:
        """Price the record and journal it: after this the process may die without losing it.
        Synchronous (one copy into the journal's mapped segment), so it runs even where the
        caller cannot await."""
        try:
            self.price_book.price_record(record)
        except Exception:
            self._failed("price", record)
            for a in record.attempts:
                a.cost_usd = ZERO
        journal = self.ledger_writer.journal
        if journal is not None:
            journal.append(record)

    async def finish(self, reservation: Reservation | None, record: RequestRecord) -> None:
        """Settle the limiter and queue the record for the ledger. Never raises."""
        if self.limiter is not None and reservation is not None and not reservation.settled:
            try:
                await self.limiter.settle(reservation, _tokens(record), record.cost_usd)
            except Exception:
                self._failed("limits", record)
        self._settled(record)

    def finishes_now(self, reservation: Reservation | None) -> bool:
        """Whether `finish_now` can settle this reservation: nothing to settle (open mode), or
        a limiter that settles without awaiting (in memory). Then the closer runs it as a
        callback rather than a task per request."""
        return reservation is None or reservation.settled or self.limiter is None \
            or getattr(self.limiter, "settle_now", None) is not None

    def finish_now(self, reservation: Reservation | None, record: RequestRecord) -> None:
        """`finish` without awaiting, where `finishes_now(reservation)`. Never raises."""
        if self.limiter is not None and reservation is not None and not reservation.settled:
            try:
                self.limiter.settle_now(  # type: ignore[attr-defined]
                    reservation, _tokens(record), record.cost_usd)
            except Exception:
                self._failed("limits", record)
        self._settled(record)

    def _settled(self, record: RequestRecord) -> None:
        """The limiter is settled: queue the record for the ledger, count it, tell listeners."""
        try:
            self.ledger_writer.record(record)
        except Exception:
            self._failed("ledger", record)
        self.settled += 1
        try:
            self.observe(record)
        except Exception:
            self._failed("metrics", record)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                self._failed("listener", record)

    def _estimate(
        self,
        reservation: Reservation | None,
        record: RequestRecord,
        body: Mapping[str, Any] | None,
        completion_text: str | None,
    ) -> None:
        last = record.attempts[-1]
        for a in record.attempts:
            if a.usage is not None or a.outcome not in _GENERATED:
                continue
            a.usage = self._estimate_one(a, a is last, reservation, body, completion_text)

    @staticmethod
    def _estimate_one(
        a: AttemptRecord,
        is_last: bool,
        reservation: Reservation | None,
        body: Mapping[str, Any] | None,
        completion_text: str | None,
    ) -> Usage:
        if body is not None:
            prompt = count_prompt_tokens(body, a.upstream_model)
        else:
            prompt = reservation.estimate.prompt_tokens if reservation is not None else 0
        # Only the attempt that reached the client produced the text it received.
        if is_last and completion_text is not None:
            output = count_text_tokens(completion_text, a.upstream_model)
        else:
            output = a.streamed_chunks
        return Usage(input_uncached=prompt, output=output, source="estimated")

    def observe(self, record: RequestRecord | None = None) -> None:
        """Update token, cost and ledger metrics (also called by /metrics when idle)."""
        m = self.metrics
        if m is None:
            return
        if record is not None:
            usages = [a.usage for a in record.attempts if a.usage is not None]
            for b in BUCKETS:
                n = sum(getattr(u, b) for u in usages) if len(usages) > 1 \
                    else getattr(usages[0], b) if usages else 0
                if n:
                    m.add_tokens(record.tenant, record.model, b, n)
            cost = record.cost_usd
            if cost:
                # Prometheus counters are floats: fine for a dashboard, never for billing.
                m.add_cost(record.tenant, record.model, float(cost))
        w = self.ledger_writer
        if record is None:  # per record it would only be overwritten before anyone reads it
            m.ledger_pending.set(w.pending)
        spilled = w.stats.spilled
        if spilled > self._spilled_seen:
            m.ledger_spilled.inc(spilled - self._spilled_seen)
            self._spilled_seen = spilled

    def _failed(self, step: str, record: RequestRecord) -> None:
        self.failures[step] += 1
        log.exception("settle step %r failed for request %s", step, record.request_id)

    async def report(
        self,
        start: date,
        end: date,
        *,
        tenant: str | None = None,
        group_by: Sequence[str] = ("tenant", "model"),
    ) -> Report:
        """A usage report from this gateway's ledger (admin and tenant usage endpoints)."""
        p = self.policy
        return await asyncio.to_thread(
            run_report, p.ledger.url, start, end, tenant=tenant, group_by=group_by, policy=p,
            schema=p.ledger.schema_name,
        )


def _tokens(record: RequestRecord) -> int:
    """What the limiter's token rules count for a finished request: every attempt's tokens."""
    return sum(a.usage.total for a in record.attempts if a.usage is not None)
