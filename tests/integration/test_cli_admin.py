"""`gateway keys create|list|revoke|hash` and `gateway usage report`, each run as its own process
(`python -m gateway …`) against a policy file whose ledger and key store are a fresh PostgreSQL
schema — what an admin types, and what a running gateway then does with it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
import yaml

from gateway.accounting.ledger_rows import BUCKETS
from tests.integration.tenancy_support import (
    MSG,
    LedgerDB,
    StampedFake,
    fake_provider,
    pg_schema,
    policy_key,
    poll,
    redis_prefix,
    run_cli,
    sdk,
    tenant_policy,
    up,
    write_policy,
)

__all__ = ["pg_schema", "redis_prefix", "up"]  # fixtures used by this module

ACME = policy_key("acme-ci")
GLOBEX = policy_key("globex-1")
PRICE = {"input": "0.25", "cache_read": "0.125", "output": "1.25"}


def policy(tmp: Any, schema: str, prefix: str, up: StampedFake) -> dict[str, Any]:
    return tenant_policy(
        tmp, schema, prefix, {"up": fake_provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m", "pricing": [PRICE]}]}},
        {"acme": {"keys": [ACME.entry()]}, "globex": {"keys": [GLOBEX.entry()]}})


@pytest.fixture
def gw(pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any, gateway: Any) -> Any:
    # The schema fixture comes first so it is dropped after the gateway flushed and stopped.
    return gateway(policy(tmp_path, pg_schema, redis_prefix, up))


def listed(config: Any, *args: str) -> dict[str, dict[str, Any]]:
    out = run_cli("keys", "list", *args, config=config).stdout
    return {k["id"]: k for k in map(json.loads, out.splitlines())}


# ---- keys ------------------------------------------------------------------------------------

def test_keys_hash_prints_the_policy_hash() -> None:
    key = "gw-example-key-for-hashing"
    out = run_cli("keys", "hash", key).stdout.strip()
    assert out == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_keys_create_list_revoke(pg_schema: str, redis_prefix: str, up: StampedFake,
                                 tmp_path: Any) -> None:
    config = write_policy(tmp_path, policy(tmp_path, pg_schema, redis_prefix, up))
    made = run_cli("keys", "create", "--tenant", "acme", "--name", "nightly",
                   "--expires", "2030-01-31", config=config)
    key = made.stdout.strip()
    # The key alone on stdout (scripts capture it), shown once; the id on stderr.
    assert key.startswith("gw-") and len(key) == 46 and "\n" not in key
    key_id = made.stderr.split("key id ", 1)[1].split()[0]
    other = run_cli("keys", "create", "--tenant", "globex", config=config).stdout.strip()

    everyone = listed(config)
    assert set(everyone) >= {key_id} and len(everyone) == 2
    rec = everyone[key_id]
    assert rec == {"id": key_id, "tenant": "acme", "name": "nightly",
                   "hint": f"{key[:5]}***{key[-2:]}", "source": "store",
                   "created_at": rec["created_at"],
                   "expires_at": "2030-02-01T00:00:00Z",  # valid through the 31st, UTC
                   "revoked_at": None}
    text = run_cli("keys", "list", config=config).stdout
    assert key not in text and other not in text and "sha256:" not in text
    assert set(listed(config, "--tenant", "acme")) == {key_id}

    out = run_cli("keys", "revoke", key_id, config=config)
    assert out.stdout.strip() == f"revoked {key_id} (tenant acme)"
    assert listed(config)[key_id]["revoked_at"] is not None
    # Revoking twice is harmless; an unknown id says how to find the right one.
    assert run_cli("keys", "revoke", key_id, config=config).returncode == 0
    bad = run_cli("keys", "revoke", "key_nope", config=config, check=False)
    assert bad.returncode == 1 and "gateway keys list" in bad.stderr


def test_keys_create_refuses_an_unknown_tenant(pg_schema: str, redis_prefix: str,
                                               up: StampedFake, tmp_path: Any) -> None:
    config = write_policy(tmp_path, policy(tmp_path, pg_schema, redis_prefix, up))
    bad = run_cli("keys", "create", "--tenant", "acmee", config=config, check=False)
    assert bad.returncode == 2
    assert "unknown tenant 'acmee'" in bad.stderr and "acme, globex" in bad.stderr
    assert bad.stdout == ""


def test_cli_issued_key_works_and_cli_revocation_reaches_a_running_gateway(gw: Any) -> None:
    key = run_cli("keys", "create", "--tenant", "globex", config=gw.policy_path).stdout.strip()
    [key_id] = listed(gw.policy_path, "--tenant", "globex")
    client = sdk(gw.base_url, key)

    def status() -> int:
        try:
            client.chat.completions.create(model="chat", messages=MSG)
            return 200
        except openai.AuthenticationError as e:
            return e.status_code

    poll(lambda: status() == 200, timeout=5, what="the CLI-issued key to authenticate")
    run_cli("keys", "revoke", key_id, config=gw.policy_path)
    # The CLI wrote the database and published the revocation on Redis.
    poll(lambda: status() == 401, timeout=3, what="the gateway to refuse the revoked key")


# ---- usage report ----------------------------------------------------------------------------

def _range() -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()


def test_usage_report_formats_agree_with_the_ledger(gw: Any, pg_schema: str,
                                                   up: StampedFake) -> None:
    db = LedgerDB(pg_schema)
    up.cached_tokens = 4
    ids = []
    for n, key in enumerate((ACME, ACME, GLOBEX)):
        rid = f"cli-{n}-{datetime.now(UTC).timestamp()}"
        sdk(gw.base_url, key.key).chat.completions.create(model="chat", messages=MSG,
                                                          extra_headers={"x-request-id": rid})
        ids.append(rid)
    for rid in ids:
        db.wait_request(rid)
    start, end = _range()
    span = ("--from", start, "--to", end)
    # 7 uncached × $0.25 + 4 cached × $0.125 + 5 output × $1.25 per million, per request.
    one = Decimal("0.0000085")
    assert db.totals()["cost_usd"] == 3 * one

    doc = json.loads(run_cli("usage", "report", *span, "--format", "json",
                             config=gw.policy_path).stdout)
    assert doc["from"] == start and doc["to"] == end and doc["group_by"] == ["tenant", "model"]
    rows = {r["tenant"]: r for r in doc["rows"]}
    assert {t: (r["requests"], r["cost_usd"]) for t, r in rows.items()} == \
        {"acme": (2, "0.000017"), "globex": (1, "0.0000085")}
    assert rows["acme"]["input_uncached"] == 14 and rows["acme"]["cache_read"] == 8
    t = db.totals()
    assert {b: doc["totals"][b] for b in BUCKETS} == {b: t[b] for b in BUCKETS}
    assert doc["totals"]["cost_usd"] == "0.0000255"  # a plain decimal, never 2.55E-5

    table = list(csv.DictReader(io.StringIO(run_cli(
        "usage", "report", *span, "--format", "csv", "--group-by", "tenant,day",
        config=gw.policy_path).stdout)))
    assert [(r["kind"], r["tenant"], r["day"]) for r in table] == [
        ("usage", "acme", datetime.now(UTC).date().isoformat()),
        ("usage", "globex", datetime.now(UTC).date().isoformat()), ("total", "", "")]
    assert table[-1]["cost_usd"] == "0.0000255" and table[-1]["requests"] == "3"

    text = run_cli("usage", "report", *span, "--tenant", "globex", config=gw.policy_path).stdout
    lines = text.splitlines()
    assert lines[0] == f"Usage {start} .. {end} (UTC, inclusive), tenant globex"
    assert lines[1].split() == ["kind", "tenant", "model", "requests", "input_uncached",
                                "cache_read", "cache_write", "output", "reasoning",
                                "total_tokens", "cost_usd"]
    assert lines[-1].split() == ["total", "1", "7", "4", "0", "5", "0", "16", "0.0000085"]
    assert "acme" not in text


def test_usage_report_refuses_bad_arguments(pg_schema: str, redis_prefix: str,
                                            up: StampedFake, tmp_path: Any) -> None:
    config = write_policy(tmp_path, policy(tmp_path, pg_schema, redis_prefix, up))
    bad = run_cli("usage", "report", "--from", "2026-03-01", "--to", "2026-03-31",
                  "--group-by", "tenant,colour", config=config, check=False)
    assert bad.returncode == 2 and "colour" in bad.stderr
    bad = run_cli("usage", "report", "--from", "2026-03-31", "--to", "2026-03-01",
                  config=config, check=False)
    assert bad.returncode == 2 and "swap them" in bad.stderr
    # No gateway has created this schema's ledger yet: a message, not a traceback (reports
    # never create a ledger).
    bad = run_cli("usage", "report", "--from", "2026-03-01", "--to", "2026-03-31",
                  config=config, check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("cannot read the ledger: no ledger tables") and \
        pg_schema in bad.stderr
    assert "Traceback" not in bad.stderr


# ---- mistakes: one line each, naming the way out ---------------------------------------------

def test_keys_create_refuses_an_expiry_in_the_past_or_malformed(
        pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any) -> None:
    config = write_policy(tmp_path, policy(tmp_path, pg_schema, redis_prefix, up))
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    for expires, says in ((yesterday, f"--expires {yesterday} is in the past"),
                          ("2026-13-01", "bad --expires: expires '2026-13-01' is not an ISO "
                                         "date (2026-03-31)"),
                          ("9999-12-31", "beyond the last date")):
        bad = run_cli("keys", "create", "--tenant", "acme", "--expires", expires, config=config,
                      check=False)
        assert bad.returncode == 2 and bad.stdout == "", bad.stderr
        assert says in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert listed(config) == {}  # nothing was issued
    # Today is fine: a bare date is valid through that UTC day.
    today = datetime.now(UTC).date().isoformat()
    assert run_cli("keys", "create", "--tenant", "acme", "--expires", today,
                   config=config).stdout.startswith("gw-")


def test_admin_commands_read_the_policy_in_GATEWAY_CONFIG(
        pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any) -> None:
    config = write_policy(tmp_path, policy(tmp_path, pg_schema, redis_prefix, up))
    env = {"GATEWAY_CONFIG": str(config)}
    # No --config: the policy the gateway serves, as `gateway serve` finds it.
    key = run_cli("keys", "create", "--tenant", "acme", env=env).stdout.strip()
    assert key.startswith("gw-")
    assert [k["tenant"] for k in map(json.loads, run_cli("keys", "list",
                                                         env=env).stdout.splitlines())] == ["acme"]
    bad = run_cli("keys", "create", "--tenant", "acmee", env=env, check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("unknown tenant 'acmee': not in the policy; did you mean "
                                 "'acme'? Known tenants: acme, globex.")
    assert f"{config} ($GATEWAY_CONFIG)" in bad.stderr and "pass --config FILE" in bad.stderr


def test_admin_commands_say_when_they_read_the_default_policy() -> None:
    # The embedded default has no tenants: an admin who forgot --config is told what was read.
    bad = run_cli("keys", "create", "--tenant", "acme", env={"GATEWAY_CONFIG": ""},
                  check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "policies/default.yaml (the default path)" in bad.stderr
    assert "pass --config FILE" in bad.stderr
    missing = run_cli("keys", "list", env={"GATEWAY_CONFIG": "/nonexistent/policy.yaml"},
                      check=False)
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert "/nonexistent/policy.yaml: cannot read the policy" in missing.stderr
    assert "(found by $GATEWAY_CONFIG)" in missing.stderr and "--config" in missing.stderr


def test_keys_list_for_an_unknown_tenant_names_the_known_ones(
        pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any) -> None:
    config = write_policy(tmp_path, policy(tmp_path, pg_schema, redis_prefix, up))
    run_cli("keys", "create", "--tenant", "globex", config=config)
    assert run_cli("keys", "list", "--tenant", "acme", config=config).stdout == ""  # declared
    bad = run_cli("keys", "list", "--tenant", "globx", config=config, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("unknown tenant 'globx': not in the policy or the key "
                                 "database; did you mean 'globex'? Known tenants: acme, globex.")


def test_usage_report_for_an_unknown_tenant_fails_naming_the_known_ones(
        gw: Any, pg_schema: str, up: StampedFake, tmp_path: Any) -> None:
    db = LedgerDB(pg_schema)
    sdk(gw.base_url, GLOBEX.key).chat.completions.create(model="chat", messages=MSG)
    poll(lambda: db.count("globex") == 1, what="globex's request in the ledger")
    bad = run_cli("usage", "report", "--tenant", "globx", config=gw.policy_path, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("unknown tenant 'globx': not in the policy or the ledger; "
                                 "did you mean 'globex'? Known tenants: acme, globex.")
    assert f"This read the policy {gw.policy_path} (--config)" in bad.stderr
    # A tenant since removed from the policy still has its history.
    doc = yaml.safe_load(gw.policy_path.read_text())
    del doc["tenants"]["globex"]
    without = write_policy(tmp_path, doc, "without-globex.yaml")
    out = run_cli("usage", "report", "--tenant", "globex", "--format", "json", config=without)
    assert json.loads(out.stdout)["totals"]["requests"] == 1
    # ...and the ledger's tenants are among the known ones.
    bad = run_cli("usage", "report", "--tenant", "nobody", config=without, check=False)
    assert bad.returncode == 2 and "Known tenants: acme, globex." in bad.stderr


def test_usage_report_defaults_to_month_to_date(gw: Any) -> None:
    doc = json.loads(run_cli("usage", "report", "--format", "json",
                             config=gw.policy_path).stdout)
    today = datetime.now(UTC).date()
    assert (doc["from"], doc["to"]) == (today.replace(day=1).isoformat(), today.isoformat())
    # Either end alone: the other keeps its default.
    doc = json.loads(run_cli("usage", "report", "--format", "json", "--from",
                             today.replace(day=1).isoformat(), config=gw.policy_path).stdout)
    assert doc["to"] == today.isoformat()
