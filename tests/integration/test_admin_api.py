"""The admin API (`server.admin_key`) and a tenant's own `/v1/usage`, against the real gateway
with its ledger and key store in PostgreSQL and its budgets in Redis."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx
import openai
import pytest

from gateway.accounting.ledger_rows import BUCKETS
from gateway.limits.budget import period_end
from tests.fakes.base import free_port
from tests.integration.tenancy_support import (
    ADMIN_KEY,
    MSG,
    LedgerDB,
    StampedFake,
    admin,
    fake_provider,
    message,
    pg_schema,
    policy_key,
    redis_prefix,
    sdk,
    tenant_policy,
    up,
)

__all__ = ["pg_schema", "redis_prefix", "up"]  # fixtures used by this module

ACME = policy_key("acme-ci", "ci-bot")
GLOBEX = policy_key("globex-1")
PRICE = {"input": "1000", "output": "2000"}  # $0.021 per request (11 prompt + 5 output)


def policy(tmp: Any, schema: str, prefix: str, up: StampedFake, **server: Any) -> dict[str, Any]:
    p = tenant_policy(
        tmp, schema, prefix, {"up": fake_provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m", "pricing": [PRICE]}]},
         "other": {"deployments": [{"provider": "up", "model": "o", "pricing": [PRICE]}]}},
        {"acme": {"keys": [ACME.entry()], "budget": {"monthly_usd": "50", "daily_usd": "10"}},
         "globex": {"keys": [GLOBEX.entry()]}})
    p["server"].update(server)
    return p


@pytest.fixture
def gw(pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any, gateway: Any) -> Any:
    # The schema fixture comes first so it is dropped after the gateway flushed and stopped.
    return gateway(policy(tmp_path, pg_schema, redis_prefix, up))


def days() -> str:
    today = datetime.now(UTC).date()
    return f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"


def traffic(gw: Any, db: LedgerDB, acme: int = 3, globex: int = 2) -> None:
    """Requests from both tenants, waited for in the ledger."""
    ids = []
    for i in range(acme):
        rid = f"acme-{i}-{datetime.now(UTC).timestamp()}"
        sdk(gw.base_url, ACME.key).chat.completions.create(
            model="chat" if i % 2 == 0 else "other", messages=MSG, max_tokens=5,
            extra_headers={"x-request-id": rid})
        ids.append(rid)
    for i in range(globex):
        rid = f"globex-{i}-{datetime.now(UTC).timestamp()}"
        sdk(gw.base_url, GLOBEX.key).chat.completions.create(
            model="chat", messages=MSG, max_tokens=5, extra_headers={"x-request-id": rid})
        ids.append(rid)
    for rid in ids:
        db.wait_request(rid)


ADMIN_CALLS = [("POST", "/admin/keys", {"tenant": "acme"}), ("GET", "/admin/keys", None),
               ("DELETE", "/admin/keys/key_x", None), ("GET", "/admin/usage", None),
               ("GET", "/admin/budgets/acme", None)]


# ---- the admin key ---------------------------------------------------------------------------

def test_every_admin_route_needs_the_admin_key(gw: Any) -> None:
    for method, path, body in ADMIN_CALLS:
        for headers, why in (({}, "didn't provide"),
                             ({"Authorization": "Bearer wrong-key"}, "Incorrect admin key"),
                             # a tenant's key is no admin key
                             ({"Authorization": f"Bearer {ACME.key}"}, "Incorrect admin key"),
                             ({"x-api-key": "wrong-key"}, "Incorrect admin key")):
            r = httpx.request(method, gw.url + path, headers=headers, json=body)
            assert r.status_code == 401, (method, path, r.text)
            err = r.json()["error"]
            assert err["code"] == "invalid_api_key" and why in err["message"]
    # and with it, each answers (x-api-key works as well as Bearer)
    r = httpx.get(gw.url + "/admin/keys", headers={"x-api-key": ADMIN_KEY})
    assert r.status_code == 200


def test_admin_api_is_off_without_an_admin_key(pg_schema: str, redis_prefix: str,
                                               up: StampedFake, tmp_path: Any,
                                               gateway: Any) -> None:
    gw = gateway(policy(tmp_path, pg_schema, redis_prefix, up, admin_key=None))
    for method, path, body in ADMIN_CALLS:
        r = admin(method, gw.url, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "admin_disabled"


# ---- keys ------------------------------------------------------------------------------------

def test_create_list_revoke_keys(gw: Any) -> None:
    r = admin("POST", gw.url, "/admin/keys", json={"tenant": "acme", "name": "deploy-bot"})
    assert r.status_code == 201, r.text
    made = r.json()
    key = made.pop("key")
    assert made["tenant"] == "acme" and made["name"] == "deploy-bot"
    assert made["source"] == "store" and made["revoked_at"] is None
    assert made["hint"] == f"{key[:5]}***{key[-2:]}"
    assert sdk(gw.base_url, key).chat.completions.create(model="chat", messages=MSG).choices

    globex = admin("POST", gw.url, "/admin/keys", json={"tenant": "globex"}).json()
    listed = admin("GET", gw.url, "/admin/keys")
    assert listed.status_code == 200
    rows = listed.json()["data"]
    by_id = {k["id"]: k for k in rows}
    assert set(by_id) == {ACME.id, GLOBEX.id, made["id"], globex["id"]}
    assert by_id[ACME.id]["source"] == "policy" and by_id[ACME.id]["hint"] is None
    assert by_id[made["id"]] == made
    # Never a key or a hash, for any key.
    assert key not in listed.text and globex["key"] not in listed.text
    assert "sha256:" not in listed.text and all("hash" not in k and "key" not in k for k in rows)
    only = admin("GET", gw.url, "/admin/keys?tenant=acme").json()["data"]
    assert {k["id"] for k in only} == {ACME.id, made["id"]}

    r = admin("DELETE", gw.url, f"/admin/keys/{made['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(gw.base_url, key).chat.completions.create(model="chat", messages=MSG)
    assert "was revoked" in message(e.value)
    after = {k["id"]: k for k in admin("GET", gw.url, "/admin/keys").json()["data"]}
    assert after[made["id"]]["revoked_at"] == r.json()["revoked_at"]
    # Revoking again is harmless; the other keys still work.
    assert admin("DELETE", gw.url, f"/admin/keys/{made['id']}").status_code == 200
    assert sdk(gw.base_url, globex["key"]).chat.completions.create(model="chat",
                                                                   messages=MSG).choices


def test_key_errors_name_the_way_out(gw: Any) -> None:
    r = admin("POST", gw.url, "/admin/keys", json={"tenant": "nobody"})
    assert r.status_code == 400 and "acme, globex" in r.json()["error"]["message"]
    r = admin("DELETE", gw.url, "/admin/keys/key_doesnotexist")
    assert r.status_code == 404 and "gateway keys list" in r.json()["error"]["message"]
    r = admin("DELETE", gw.url, f"/admin/keys/{ACME.id}")
    assert r.status_code == 400 and "remove it from the policy" in r.json()["error"]["message"]
    # A key that expired yesterday is refused, saying so.
    past = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    old = admin("POST", gw.url, "/admin/keys", json={"tenant": "acme", "expires": past}).json()
    assert old["expires_at"].startswith(datetime.now(UTC).date().isoformat())
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(gw.base_url, old["key"]).chat.completions.create(model="chat", messages=MSG)
    assert "expired" in message(e.value)


# ---- usage -----------------------------------------------------------------------------------

def _tenant_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["tenant"], r["model"]): r for r in rows}


def test_admin_usage_json_and_csv_equal_the_ledger(gw: Any, pg_schema: str) -> None:
    db = LedgerDB(pg_schema)
    traffic(gw, db)
    r = admin("GET", gw.url, f"/admin/usage?{days()}")
    assert r.status_code == 200, r.text
    doc = r.json()
    rows = _tenant_rows(doc["rows"])
    assert set(rows) == {("acme", "chat"), ("acme", "other"), ("globex", "chat")}
    assert [rows[k]["requests"] for k in sorted(rows)] == [2, 1, 2]
    for tenant in ("acme", "globex"):
        t = db.totals(tenant)
        mine = [x for k, x in rows.items() if k[0] == tenant]
        assert sum(x["requests"] for x in mine) == t["requests"]
        assert sum(Decimal(x["cost_usd"]) for x in mine) == t["cost_usd"]
        for b in BUCKETS:
            assert sum(x[b] for x in mine) == t[b]
    t = db.totals()
    assert doc["totals"]["requests"] == t["requests"] == 5
    assert Decimal(doc["totals"]["cost_usd"]) == t["cost_usd"] == Decimal("0.105")

    r = admin("GET", gw.url, f"/admin/usage?{days()}&format=csv&group_by=tenant")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    got = {x["tenant"]: (int(x["requests"]), Decimal(x["cost_usd"]))
           for x in table if x["kind"] == "usage"}
    assert got == {"acme": (3, db.totals("acme")["cost_usd"]),
                   "globex": (2, db.totals("globex")["cost_usd"])}
    [total] = [x for x in table if x["kind"] == "total"]
    assert Decimal(total["cost_usd"]) == t["cost_usd"]

    one = admin("GET", gw.url, f"/admin/usage?{days()}&tenant=globex").json()
    assert {x["tenant"] for x in one["rows"]} == {"globex"}
    assert one["totals"]["requests"] == 2
    bad = admin("GET", gw.url, f"/admin/usage?{days()}&format=xml")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
    bad = admin("GET", gw.url, "/admin/usage?from=2026-02-01&to=2026-01-01")
    assert bad.status_code == 400


def test_v1_usage_returns_only_the_callers_tenant(gw: Any, pg_schema: str) -> None:
    db = LedgerDB(pg_schema)
    traffic(gw, db)
    for key, tenant, other in ((ACME, "acme", "globex"), (GLOBEX, "globex", "acme")):
        mine = db.totals(tenant)
        for query in (days(), f"{days()}&tenant={other}", f"{days()}&group_by=tenant,model"):
            r = httpx.get(f"{gw.url}/v1/usage?{query}",
                          headers={"Authorization": f"Bearer {key.key}"})
            assert r.status_code == 200, r.text
            doc = r.json()
            # Asking for another tenant changes nothing: a key reads its own tenant's usage.
            assert doc["tenant"] == tenant
            assert {x["tenant"] for x in doc["rows"]} == {tenant}
            assert doc["totals"]["requests"] == mine["requests"]
            assert Decimal(doc["totals"]["cost_usd"]) == mine["cost_usd"]
        r = httpx.get(f"{gw.url}/v1/usage?{days()}&format=csv",
                      headers={"Authorization": f"Bearer {key.key}"})
        assert r.status_code == 200 and other not in r.text
    for headers in ({}, {"Authorization": "Bearer gw-nope-nope-nope"},
                    {"Authorization": f"Bearer {ADMIN_KEY}"}):
        r = httpx.get(f"{gw.url}/v1/usage?{days()}", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


# ---- budgets ---------------------------------------------------------------------------------

def test_admin_budget_shows_limit_spend_and_reset(gw: Any, pg_schema: str) -> None:
    db = LedgerDB(pg_schema)
    traffic(gw, db, acme=2, globex=1)
    r = admin("GET", gw.url, "/admin/budgets/acme")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tenant"] == "acme"
    spent = db.totals("acme")["cost_usd"]
    assert spent == Decimal("0.042")
    now = datetime.now(UTC)
    by_period = {b["period"]: b for b in doc["budget"]}
    assert set(by_period) == {"month", "day"}
    periods: tuple[tuple[Literal["month", "day"], str], ...] = (("month", "50"), ("day", "10"))
    for period, limit in periods:
        b = by_period[period]
        assert Decimal(b["limit_usd"]) == Decimal(limit)
        assert Decimal(b["spent_usd"]) == spent  # settled spend equals the ledger's
        assert Decimal(b["reserved_usd"]) == 0  # nothing in flight
        assert Decimal(b["remaining_usd"]) == Decimal(limit) - spent
        assert b["resets_at"] == period_end(period, now).strftime("%Y-%m-%dT%H:%M:%SZ")
    # A tenant without a budget has none; an unknown tenant is an error, not an empty answer.
    assert admin("GET", gw.url, "/admin/budgets/globex").json()["budget"] == []
    r = admin("GET", gw.url, "/admin/budgets/acmee")
    assert r.status_code == 404 and "acme, globex" in r.json()["error"]["message"]


# ---- errors that name the way out, and keep the database to the log -------------------------

def test_admin_usage_for_an_unknown_tenant_is_404_naming_the_known_ones(gw: Any) -> None:
    for tenant in ("globx", ""):
        r = admin("GET", gw.url, f"/admin/usage?{days()}&tenant={tenant}")
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["param"] == "tenant" and f"Unknown tenant {tenant!r}" in err["message"]
        assert "Known tenants: acme, globex." in err["message"]
    # A declared tenant without usage is an empty report, not an error.
    r = admin("GET", gw.url, f"/admin/usage?{days()}&tenant=globex")
    assert r.status_code == 200 and r.json()["totals"]["requests"] == 0


def test_create_key_refuses_a_malformed_expiry_with_400(gw: Any) -> None:
    for expires, says in (("2026-13-01", "is not an ISO date"), (20260101, "must be a string"),
                          ("9999-12-31", "beyond the last date")):
        r = admin("POST", gw.url, "/admin/keys", json={"tenant": "acme", "expires": expires})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "expires" and says in err["message"]
    r = admin("POST", gw.url, "/admin/keys", json={"tenant": "acme", "name": ["x"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_usage_with_the_ledger_down_says_nothing_of_the_database(
        redis_prefix: str, up: StampedFake, tmp_path: Any, gateway: Any) -> None:
    # A PostgreSQL URL where nothing listens: user, host, port and database are all ours.
    port = free_port()
    url = f"postgresql://ledger_user@127.0.0.1:{port}/usage_db"
    gw = gateway(tenant_policy(
        tmp_path, "public", redis_prefix, {"up": fake_provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m"}]}},
        {"acme": {"keys": [ACME.entry()]}}, ledger_url=url))
    seen = _Records()
    logging.getLogger("gateway.api").addHandler(seen)
    try:
        answers = [httpx.get(f"{gw.url}/v1/usage", timeout=30,
                             headers={"Authorization": f"Bearer {ACME.key}"}),
                   admin("GET", gw.url, "/admin/usage"),
                   admin("GET", gw.url, "/admin/usage?tenant=acme")]
    finally:
        logging.getLogger("gateway.api").removeHandler(seen)
    for r in answers:
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        message = r.json()["error"]["message"]
        assert message == "The usage ledger cannot be read right now. Retry shortly."
        for secret in ("ledger_user", "127.0.0.1", str(port), "usage_db", "postgres"):
            assert secret not in r.text
    # The operator's log has the detail, at warning.
    details = [rec.getMessage() for rec in seen.records if rec.levelno == logging.WARNING]
    assert len(details) == 3
    assert all(f"ledger_user@127.0.0.1:{port}/usage_db" in d for d in details)
