"""Confining single-use traffic: the deployments a tenant whose KV is never read back is
routed to, and the ones other tenants are kept on (`flow_control.single_use_backends`).

Flow control shares a pool's slots fairly, but not its prefix caches or its engine steps: a
flood of single turns spread over every backend writes KV that nothing reads again, pushing
out the cached conversations of a chat tenant, and its long prefills share the engine steps
of the chat's turns (docs/routing.md, "The flood experiment"). Confined to a few backends,
its writes and prefills land there alone, and the other tenants are routed to the rest of
the pool first, so their conversations settle on backends the flood does not touch. (Left
to the strategy, which sees the flood's backends loaded, only new conversations moved: one
whose history was cached there stayed, and its tail with it.)

A tenant is single-use while its recent re-read ÷ written tokens (`KvReuse.reuse`) is below
`SINGLE_USE_BELOW`, and it is confined only while another tenant that does read back its KV
has requests running or queued in the pool: there is nothing to protect otherwise, and a
tenant alone, or single-turn traffic by itself, keeps every backend. Its deployments are the
`ceil(share × deployments up)` (at least one) that score highest on a stable hash of the
tenant and the deployment's id (rendezvous hashing): every replica picks the same ones
without talking to the others, and a deployment going down or coming back moves only the
tenant whose set held it. The other tenants get the deployments up outside the sets of the
confined tenants still running or queued — nothing, when those sets cover the pool. Either
way the rest of the pool stays a fallback (gateway/routing/plan.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence

from gateway.flow.reuse import KvReuse

SINGLE_USE_BELOW = 0.5
"""A tenant re-reading less than this share of the tokens it writes counts as single-use. A
chat re-reads its history, which after a couple of turns is longer than what a turn adds
(reuse ≥ 1); a flood of single turns re-reads nothing (0)."""
MAX_CACHED = 10_000
"""Tenants whose deployment sets are remembered (the set is recomputed when forgotten)."""


def _score(tenant: str, deployment: str) -> int:
    # Not `hash()`: it is salted per process, and replicas must agree.
    digest = hashlib.blake2b(f"{tenant}\0{deployment}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(tenant: str, deployments: Sequence[str], count: int) -> frozenset[str]:
    """The `count` deployments that score highest for `tenant` (all of them if fewer)."""
    ranked = sorted(deployments, key=lambda d: _score(tenant, d), reverse=True)
    return frozenset(ranked[:max(1, count)])


class Confinement:
    """Which deployments each single-use tenant of one pool may use."""

    def __init__(self, share: float | None = None) -> None:
        self.share = share
        """Of the deployments up; None: nobody is confined."""
        self._sets: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        # The tenants confined lately, by the deployments they were given: others avoid these
        # while the tenant is still running or queued.
        self._confined: dict[str, frozenset[str]] = {}
        self._rest: tuple[tuple[str, ...], frozenset[str], frozenset[str] | None] | None = None

    def deployments(self, tenant: str, reuse: KvReuse, up: Sequence[str],
                    active: Collection[str]) -> frozenset[str] | None:
        """The deployments `tenant`'s request should be routed to, or None: any of the pool's.
        `up`: the pool's deployments that may serve now; `active`: the tenants with requests
        running or queued in the pool."""
        share = self.share
        if share is None or len(up) < 2:
            return None
        if reuse.reuse(tenant) >= SINGLE_USE_BELOW:
            return self._others(up, active) if self._confined else None
        # Early exit: the first chat tenant found ends the walk.
        if not any(t != tenant and reuse.reuse(t) >= SINGLE_USE_BELOW for t in active):
            self._confined.pop(tenant, None)
            return None
        key = tuple(up)
        cached = self._sets.get(tenant)
        if cached is not None and cached[0] == key:
            chosen = cached[1]
        else:
            chosen = rendezvous(tenant, key, math.ceil(share * len(key)))
            if len(self._sets) >= MAX_CACHED:
                self._sets.clear()
            self._sets[tenant] = (key, chosen)
        if self._confined.get(tenant) is not chosen:
            self._confined[tenant] = chosen
            if len(self._confined) > MAX_CACHED:
                del self._confined[next(iter(self._confined))]
        return chosen

    def _others(self, up: Sequence[str], active: Collection[str]) -> frozenset[str] | None:
        """Where a tenant that re-reads its KV goes: the deployments up outside the sets of
        the confined tenants still active (None: no such tenant, or no deployment left)."""
        confined = self._confined
        gone = [t for t in confined if t not in active]
        for t in gone:
            del confined[t]
        if not confined:
            return None
        taken = frozenset().union(*confined.values())
        key = tuple(up)
        cached = self._rest
        if cached is not None and cached[0] == key and cached[1] == taken:
            return cached[2]
        rest = frozenset(key) - taken
        result = rest or None
        self._rest = (key, taken, result)
        return result
