"""Record how long each GPU-hour priced deployment is in force, for billing by its lifetime.

A deployment with ``gpu_cost_per_hour`` is *in force* while the loaded policy routes to it
(weight > 0 on some model; weight 0 is a drain). Each gateway process records what it sees in
the ledger database's ``gpu_periods`` table (``gpu_periods.py``):

- a period opens when the deployment appears — start-up, or a reload that adds it, un-drains
  it or changes its price, provider or ``gpu_since`` (the old period closes at that instant);
- a heartbeat (``heartbeat_s``, 60 s) moves the open periods' ``ended`` to now;
- a period closes when a reload removes or drains the deployment, and at shutdown.

Writes happen in one background task, off the event loop (``asyncio.to_thread``), on this
object's own connection; a reload only changes memory and wakes the task, so a database that
is down never delays a reload or a request. A failed write is retried by the next heartbeat
(rows are upserts); a crashed process leaves ``ended`` at its last successful write.

    lifetimes = GpuLifetimes.from_policy(policy)
    await lifetimes.start()
    lifetimes.update(new_policy)          # on reload
    await lifetimes.close()               # shutdown: closes the open periods
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from gateway.accounting.gpu_billing import GpuPeriod
from gateway.accounting.gpu_periods import PeriodStore, open_period_store
from gateway.accounting.ledger import LedgerUnavailable
from gateway.accounting.pricing import as_utc
from gateway.policy.models import Policy

log = logging.getLogger(__name__)

# How long shutdown waits for the last write; past it the periods end at the last heartbeat.
_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class InForce:
    """What a period records about a deployment; a change of any of it starts a new period."""

    provider: str
    rate_per_hour: Decimal
    since: datetime | None = None


def in_force(policy: Policy) -> dict[str, InForce]:
    """The GPU-hour priced deployments the policy routes traffic to, by deployment id."""
    out: dict[str, InForce] = {}
    for route in policy.models.values():
        for d in route.deployments:
            if d.gpu_cost_per_hour is not None and d.weight > 0:
                since = as_utc(d.gpu_since) if d.gpu_since is not None else None
                out[d.id] = InForce(d.provider, d.gpu_cost_per_hour, since)
    return out


def _utcnow() -> datetime:
    return datetime.now(UTC)


class GpuLifetimes:
    def __init__(
        self,
        store: PeriodStore,
        deployments: Mapping[str, InForce],
        *,
        heartbeat_s: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.replica = replica or f"{socket.gethostname()}/{os.getpid()}"
        self._clock = clock
        self._wanted = dict(deployments)
        self._open: dict[str, GpuPeriod] = {}
        self._closed: list[GpuPeriod] = []  # closed in memory, not yet written
        self._kick = asyncio.Event()
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Successful writes and failed attempts (tests, logs).
        self.writes = 0
        self.failures = 0

    @classmethod
    def from_policy(cls, policy: Policy, *, heartbeat_s: float = 60.0,
                    clock: Callable[[], datetime] = _utcnow) -> GpuLifetimes:
        """Periods go to the policy's ledger database (a later reload that changes
        ``ledger.url`` does not move them: that needs a restart, as for the ledger)."""
        store = open_period_store(policy.ledger.url, policy.ledger.schema_name)
        return cls(store, in_force(policy), heartbeat_s=heartbeat_s, clock=clock)

    @property
    def open_periods(self) -> dict[str, GpuPeriod]:
        return dict(self._open)

    async def start(self) -> None:
        """Open a period for each deployment in force and start the heartbeat."""
        self._apply(self._wanted)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def update(self, policy: Policy) -> None:
        """A reloaded policy: close what left or changed, open what arrived (memory only;
        the write follows at once, in the background)."""
        self._wanted = in_force(policy)
        if self._task is not None and not self._closing:
            self._apply(self._wanted)
            self._kick.set()

    async def flush(self) -> bool:
        """Write now (the heartbeat's job; tests and reports that want the latest ``ended``).
        True when the database took it."""
        return await self._write()

    async def close(self) -> None:
        """Close every open period at now and write it, then drop the connection."""
        if self._task is None:
            return
        self._closing = True
        self._apply({})
        self._kick.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error("GPU periods could not be closed within %.0f s; they end at their last "
                      "heartbeat", _CLOSE_TIMEOUT_S)
            self._task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.close)

    # -- inside -------------------------------------------------------------------------------

    def _apply(self, wanted: Mapping[str, InForce]) -> None:
        now = self._clock()
        for dep, p in list(self._open.items()):
            if wanted.get(dep) != InForce(p.provider, p.rate_per_hour, p.since):
                self._closed.append(dataclasses.replace(p, ended=now))
                del self._open[dep]
        for dep, w in wanted.items():
            if dep not in self._open:
                self._open[dep] = GpuPeriod(dep, w.provider, w.rate_per_hour, now, now, w.since,
                                            uuid.uuid4().hex, self.replica)
                log.info("GPU deployment %s in force from %s at %s/h", dep, now.isoformat(),
                         w.rate_per_hour)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.heartbeat_s)
            self._kick.clear()
            # Read before the write: a close() that lands during it gets one more write.
            closing = self._closing
            await self._write()
            if closing:
                return

    async def _write(self) -> bool:
        async with self._writing:
            now = self._clock()
            for dep, p in self._open.items():
                self._open[dep] = dataclasses.replace(p, ended=max(p.ended, now))
            closed = len(self._closed)
            rows = [*self._closed, *self._open.values()]
            if not rows:
                return True
            try:
                await asyncio.to_thread(self.store.write, rows)
            except LedgerUnavailable as e:
                self.failures += 1
                log.warning("GPU periods not written (retried at the next heartbeat): %s", e)
                return False
            except Exception:
                self.failures += 1
                log.exception("GPU periods not written (retried at the next heartbeat)")
                return False
            # Periods closed while the write ran stay queued for the next one.
            del self._closed[:closed]
            self.writes += 1
            return True
