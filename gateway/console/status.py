"""The admin documents the console's operations pages show and `/admin/*` serves as JSON:
deployments (`GET /admin/deployments`), tenants' limits against their usage
(`GET /admin/limits`) and keys with when each was last used.

Everything here reads what the gateway already holds — the runtime's policy and circuit
breakers, the signal collector's in-flight counts, scrapes and 15-minute window, the limiter's
budget counters — plus, for "last used" and the last minute's traffic, one indexed query of the
ledger in a thread. Nothing is added to the request path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from gateway.accounting.ledger import open_ledger
from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.pricing import as_utc, plain
from gateway.keys import KeyRecord
from gateway.limits.base import Limiter
from gateway.policy.models import Policy
from gateway.policy.tenants import RateLimits
from gateway.routing.defaults import strategy_for
from gateway.runtime import Runtime


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(v, digits)


def deployments(runtime: Runtime, signals: Any) -> dict[str, Any]:
    """Every model's deployments with weight, health, circuit state, in-flight, the backend's
    scraped queue and KV-cache use, and the last 15 minutes' traffic."""
    policy = runtime.policy
    loads = signals.snapshot()
    unhealthy = runtime.unavailable()
    cooling = runtime.health.snapshot()
    window = signals.window
    models = []
    for name, route in policy.models.items():
        rows = []
        for d in route.deployments:
            load = loads.load(d.id)
            stats = window.stats(d.id)
            left = cooling.get(d.id, 0.0)
            rows.append({
                "id": d.id, "provider": d.provider, "upstream_model": d.model,
                "weight": d.weight,
                "health": "unhealthy" if d.id in unhealthy else "healthy",
                "circuit": "open" if left > 0 else "closed",
                "cooldown_s": round(left, 1),
                "in_flight": load.in_flight, "queue_waiting": load.waiting,
                "queue_running": load.running, "kv_cache_usage": _round(load.kv_cache_usage),
                "window_s": stats.window_s, "attempts": stats.attempts,
                "requests_per_s": round(stats.requests_per_s, 4),
                "error_rate": _round(stats.error_rate),
                "ttft_p50_ms": _ms(stats.ttft_p50_s), "ttft_p95_ms": _ms(stats.ttft_p95_s),
            })
        models.append({"model": name, "strategy": strategy_for(policy, route), "deployments": rows,
                       "rollout": _rollout(runtime.router.rollout(name))})
    return {"generated_at": _iso(datetime.now(UTC)), "models": models}


def _rollout(ro: Any) -> dict[str, Any] | None:
    """A model's rollout as this replica last read it (docs/rollouts.md); no I/O."""
    if ro is None:
        return None
    st = ro.state
    return {"id": ro.id, "status": st.status, "step": st.step, "steps": len(ro.cfg.steps),
            "percent": ro.percent, "candidate": sorted(ro.candidate_ids), "reason": st.reason}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rates(r: RateLimits | None) -> dict[str, int | None] | None:
    if r is None:
        return None
    return {"rpm": r.rpm, "tpm": r.tpm, "concurrency": r.concurrency}


def last_minute(policy: Policy, now: datetime) -> dict[str, dict[str, int]]:
    """Requests and tokens per tenant over the last 60 s, from the ledger (blocking)."""
    since = now - timedelta(seconds=60)
    total = " + ".join(f"COALESCE(a.{b}, 0)" for b in BUCKETS)
    ledger = open_ledger(policy.ledger.url, policy.ledger.schema_name, create=False)
    try:
        ledger.connect()
        # The (day, tenant) index narrows to today (and yesterday around midnight).
        rows = ledger.read_rows(lambda ph: (
            f"SELECT r.tenant, COUNT(DISTINCT r.request_id), SUM({total}) FROM requests r "
            "LEFT JOIN attempts a ON a.request_id = r.request_id "
            f"WHERE r.day >= {ph} AND r.ts >= {ph} GROUP BY r.tenant"),
            [since.date(), since])
    finally:
        ledger.close()
    return {t: {"requests": int(n or 0), "tokens": int(k or 0)} for t, n, k in rows}


async def limits(policy: Policy, limiter: Limiter | None, tenants: Sequence[str],
                 recent: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Each tenant's declared limits and budgets against what it uses now: the limiter's
    budget counters (spent and reserved, shared across replicas with Redis) and the last
    minute's requests and tokens from the ledger."""
    out = []
    for name in tenants:
        t = policy.tenants[name]
        status = await limiter.budget_status(name) if limiter is not None else []
        budget = None
        if t.budget is not None:
            budget = {"monthly_usd": None if t.budget.monthly_usd is None
                      else plain(t.budget.monthly_usd),
                      "daily_usd": None if t.budget.daily_usd is None
                      else plain(t.budget.daily_usd),
                      "on_exceed": t.budget.on_exceed, "alerts": list(t.budget.alerts)}
        out.append({
            "tenant": name, "limits": _rates(t.limits), "key_limits": _rates(t.key_limits),
            "model_limits": {m: _rates(r) for m, r in t.model_limits.items()},
            "budget": budget,
            "budget_status": [{
                "period": s.period, "limit_usd": plain(s.limit_usd),
                "spent_usd": plain(s.spent_usd), "reserved_usd": plain(s.reserved_usd),
                "used": float((s.spent_usd + s.reserved_usd) / s.limit_usd)
                if s.limit_usd else None,
                "resets_at": _iso(s.resets_at)} for s in status],
            "last_minute": recent.get(name, {"requests": 0, "tokens": 0}),
        })
    return {"generated_at": _iso(datetime.now(UTC)), "tenants": out}


def last_used(policy: Policy, key_ids: Sequence[str]) -> dict[str, datetime]:
    """Each key's newest request in the ledger (blocking). One statement per 500 keys, not
    one per key (a round trip and a transaction each, most of the keys page on PostgreSQL);
    inside it, one backward seek per key on the (key_id, ts) index — a GROUP BY over the
    keys would read every request they ever made."""
    if not key_ids:
        return {}
    ledger = open_ledger(policy.ledger.url, policy.ledger.schema_name, create=False)
    out: dict[str, datetime] = {}
    try:
        ledger.connect()
        for i in range(0, len(key_ids), 500):
            chunk = list(key_ids[i: i + 500])
            for key_id, v in ledger.read_rows(partial(_last_used_sql, len(chunk)), chunk):
                if v is not None:
                    out[key_id] = as_utc(datetime.fromisoformat(v) if isinstance(v, str)
                                         else v)
    finally:
        ledger.close()
    return out


def _last_used_sql(n: int, ph: str) -> str:
    # VALUES names its column column1 in both SQLite and PostgreSQL.
    keys = ", ".join([f"({ph})"] * n)
    return ("SELECT k.column1, (SELECT MAX(r.ts) FROM requests r WHERE r.key_id = k.column1) "
            f"FROM (VALUES {keys}) AS k")


async def keys_with_use(auth: Any, policy: Policy, tenant: str | None) -> list[dict[str, Any]]:
    """`GET /admin/keys`' rows (no secrets) with `last_used_at` from the ledger; a ledger
    that cannot be read leaves it empty rather than hiding the keys."""
    records: list[KeyRecord] = await auth.list_keys(tenant)
    try:
        used = await asyncio.to_thread(last_used, policy, [r.id for r in records])
    except Exception:
        used = {}
    return [{**r.public(), "last_used_at": _iso(used[r.id]) if r.id in used else None}
            for r in records]
