"""The per-request listing through the real gateway, its ledger in SQLite and in PostgreSQL:
`GET /admin/requests`, a tenant's own `GET /v1/usage/requests`, and `gateway usage requests`
run as its own process. Clients reuse `x-request-id`; each request is listed under the
gateway's own id, with the client's beside it (issue 8, item 5)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.integration.tenancy_support import (
    ADMIN_KEY,
    PG_URL,
    admin,
    fake_provider,
    fresh_prefix,
    fresh_schema,
    policy_key,
    poll,
    run_cli,
    tenant_policy,
)

ACME = policy_key("acme-ci", "ci-bot")
ACME_BATCH = policy_key("acme-batch")
GLOBEX = policy_key("globex-1")
PRICE = {"input": "1000", "output": "2000"}  # $0.021 per request (11 prompt + 5 output)
PROMPT = "the-prompt-text-is-never-stored"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[str, str | None]]:
    """(url, schema) of the gateway's ledger; the PostgreSQL schema is fresh, and dropped
    after the gateway (requested later, so stopped first) has flushed."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db", None
    else:
        yield from ((PG_URL, s) for s in fresh_schema())


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from fresh_prefix()


@pytest.fixture
def gw(ledger: tuple[str, str | None], prefix: str, fakes: Any, tmp_path: Any,
       gateway: Any) -> Any:
    url, schema = ledger
    a, b = fakes("a"), fakes("b")
    p = tenant_policy(
        tmp_path, schema or "public", prefix, {"a": fake_provider(a), "b": fake_provider(b)},
        {"chat": {"deployments": [{"provider": "a", "model": "m", "pricing": [PRICE]}],
                  "fallbacks": ["backup"]},
         "backup": {"deployments": [{"provider": "b", "model": "m", "pricing": [PRICE]}]},
         "other": {"deployments": [{"provider": "b", "model": "o", "pricing": [PRICE]}]}},
        {"acme": {"keys": [ACME.entry(), ACME_BATCH.entry()]},
         "globex": {"keys": [GLOBEX.entry()]}},
        ledger_url=url)
    if schema is None:
        del p["ledger"]["schema"]
    g = gateway(p)
    g.fake_a, g.fake_b = a, b
    return g


def chat(gw: Any, key: Any, rid: str | None = None, model: str = "chat") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key.key}"}
    if rid is not None:
        headers["x-request-id"] = rid
    r = httpx.post(gw.base_url + "/chat/completions", headers=headers, timeout=30,
                   json={"model": model, "max_tokens": 5,
                         "messages": [{"role": "user", "content": PROMPT}]})
    return r


def days() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}


def listed(gw: Any, n: int, key: Any = None, **params: Any) -> dict[str, Any]:
    """The listing once it holds `n` requests (settlement and the ledger write are off the
    request path): /admin/requests, or /v1/usage/requests with a tenant's key."""
    def get() -> dict[str, Any] | None:
        query = {**days(), **params}
        if key is None:
            r = admin("GET", gw.url, "/admin/requests", params=query)
        else:
            r = httpx.get(gw.url + "/v1/usage/requests", params=query, timeout=30,
                          headers={"Authorization": f"Bearer {key.key}"})
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc if len(doc["data"]) == n else None

    got: dict[str, Any] = poll(get, timeout=10, what=f"{n} listed requests ({params})")
    return got


def test_requests_reusing_one_client_id_are_each_listed_under_their_gateway_id(gw: Any) -> None:
    rid = f"dup-{uuid.uuid4().hex[:8]}"
    answers = [chat(gw, ACME, rid), chat(gw, ACME, rid), chat(gw, GLOBEX, rid),
               chat(gw, ACME, "someone-else")]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert all(r.headers["x-request-id"] == rid for r in answers[:3])
    gateway_ids = [r.headers["x-gateway-request-id"] for r in answers]
    assert len(set(gateway_ids)) == 4 and rid not in gateway_ids

    everyone = listed(gw, 3, client_request_id=rid)
    # Newest first: the globex request, then acme's second, then acme's first.
    assert [x["request_id"] for x in everyone["data"]] == gateway_ids[2::-1]
    assert {x["client_request_id"] for x in everyone["data"]} == {rid}
    assert [x["tenant"] for x in everyone["data"]] == ["globex", "acme", "acme"]
    acme = listed(gw, 2, client_request_id=rid, tenant="acme")
    assert [x["request_id"] for x in acme["data"]] == gateway_ids[1::-1]
    for row, answer in zip(acme["data"], answers[1::-1], strict=True):
        assert (row["key_id"], row["model"], row["status"], row["stream"]) == \
            ("acme-ci", "chat", 200, False)
        assert (row["input_uncached"], row["output"], row["total_tokens"]) == (11, 5, 16)
        assert row["cost_usd"] == "0.021"  # an exact decimal string
        [attempt] = row["attempts"]
        assert attempt["deployment"] == answer.headers["x-gateway-deployment"] == \
            row["deployment"]
        assert (attempt["outcome"], attempt["status"], attempt["cost_usd"]) == \
            ("ok", 200, "0.021")
        assert attempt["duration_ms"] > 0
    # Prompt and completion text are never stored, so never shown.
    whole = admin("GET", gw.url, "/admin/requests", params=days()).text
    assert PROMPT not in whole and "Hello0" not in whole and "word1" not in whole


def test_a_fallback_lists_each_attempt_and_its_cost(gw: Any) -> None:
    gw.fake_a.fail_next(1, status=503)
    rid = f"fb-{uuid.uuid4().hex[:8]}"
    r = chat(gw, ACME, rid)
    assert r.status_code == 200, r.text
    [row] = listed(gw, 1, client_request_id=rid)["data"]
    first, second = row["attempts"]
    assert (first["outcome"], first["status"], second["outcome"], second["status"]) == \
        ("error", 503, "ok", 200)
    assert second["deployment"] == row["deployment"] == r.headers["x-gateway-deployment"]
    assert first["deployment"] != second["deployment"]
    assert first["error"].startswith("HTTP 503")  # operators see why it fell through
    assert Decimal(row["cost_usd"]) == sum(Decimal(a["cost_usd"]) for a in row["attempts"])
    # The tenant sees its attempts, not the upstream's error text.
    [own] = listed(gw, 1, key=ACME, client_request_id=rid)["data"]
    assert [a["outcome"] for a in own["attempts"]] == ["error", "ok"]
    assert all("error" not in a for a in own["attempts"]) and "error_class" not in own


def test_filters_pick_status_model_key_and_the_newest(gw: Any) -> None:
    chat(gw, ACME)
    chat(gw, ACME_BATCH, model="other")
    gw.fake_b.fail_next(1, status=400)  # a client error: returned, never retried
    bad = chat(gw, ACME_BATCH, model="other")
    assert bad.status_code == 400
    chat(gw, GLOBEX)
    listed(gw, 4)
    errors = listed(gw, 1, status="error")["data"]
    assert errors[0]["request_id"] == bad.headers["x-gateway-request-id"]
    assert errors[0]["status"] == 400
    assert [(a["outcome"], a["status"]) for a in errors[0]["attempts"]] == [("error", 400)]
    assert listed(gw, 1, status="400")["data"] == errors
    assert {x["status"] for x in listed(gw, 3, status="200")["data"]} == {200}
    assert {x["key_id"] for x in listed(gw, 2, key_id="acme-batch")["data"]} == {"acme-batch"}
    assert {x["model"] for x in listed(gw, 2, model="other")["data"]} == {"other"}
    assert {x["tenant"] for x in listed(gw, 1, tenant="globex")["data"]} == {"globex"}
    newest = listed(gw, 2, limit="2")
    assert newest["has_more"] is True and newest["data"][0]["tenant"] == "globex"
    assert listed(gw, 4, limit="4")["has_more"] is False
    # The next page starts after the last row of this one, with the same filters.
    older = listed(gw, 2, limit="2", before=newest["next_cursor"])
    ids = [x["request_id"] for x in newest["data"] + older["data"]]
    assert ids == [x["request_id"] for x in listed(gw, 4, limit="4")["data"]]
    assert older["next_cursor"] is None
    table = list(csv.DictReader(io.StringIO(admin(
        "GET", gw.url, "/admin/requests", params={**days(), "format": "csv"}).text)))
    assert len(table) == 4 and {r["tenant"] for r in table} == {"acme", "globex"}


def test_a_tenant_lists_only_its_own_requests_whatever_it_asks(gw: Any) -> None:
    rid = f"shared-{uuid.uuid4().hex[:8]}"
    mine = chat(gw, GLOBEX, rid).headers["x-gateway-request-id"]
    chat(gw, ACME, rid)
    chat(gw, ACME)
    listed(gw, 3)
    for params in ({}, {"tenant": "acme"}, {"client_request_id": rid},
                   {"client_request_id": rid, "tenant": "acme"}, {"key_id": "acme-ci"}):
        r = httpx.get(gw.url + "/v1/usage/requests", params={**days(), **params}, timeout=30,
                      headers={"Authorization": f"Bearer {GLOBEX.key}"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["filters"]["tenant"] == "globex"
        assert "acme" not in json.dumps(doc["data"])
        # Another tenant's key id matches none of this tenant's requests.
        want = [] if "key_id" in params else [mine]
        assert [x["request_id"] for x in doc["data"]] == want
    assert {x["tenant"] for x in listed(gw, 2, key=ACME)["data"]} == {"acme"}
    r = httpx.get(gw.url + "/v1/usage/requests", params={**days(), "format": "csv"},
                  headers={"Authorization": f"Bearer {GLOBEX.key}"}, timeout=30)
    assert r.status_code == 200 and mine in r.text and "acme" not in r.text
    for headers in ({}, {"Authorization": "Bearer gw-nope-nope-nope"},
                    {"Authorization": f"Bearer {ADMIN_KEY}"}):
        r = httpx.get(gw.url + "/v1/usage/requests", headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_bad_filters_are_400_naming_the_parameter(gw: Any) -> None:
    for params, param, says in (
            ({"status": "oops"}, "status", "or 'error'"), ({"status": "99"}, "status", "100-599"),
            ({"limit": "0"}, "limit", "from 1 to 10,000"),
            ({"limit": "10001"}, "limit", "from 1 to 10,000"),
            ({"limit": "many"}, "limit", "whole number"), ({"format": "xml"}, "format", "csv"),
            ({"before": "yesterday"}, "before", "page cursor")):
        for path, headers in (("/admin/requests", {"Authorization": f"Bearer {ADMIN_KEY}"}),
                              ("/v1/usage/requests", {"Authorization": f"Bearer {ACME.key}"})):
            r = httpx.get(gw.url + path, params=params, headers=headers, timeout=30)
            assert r.status_code == 400, (path, params, r.text)
            err = r.json()["error"]
            assert err["param"] == param and says in err["message"], err
    r = admin("GET", gw.url, "/admin/requests", params={"from": "2026-02-01", "to": "2026-01-01"})
    assert r.status_code == 400 and "before" in r.json()["error"]["message"]
    r = admin("GET", gw.url, "/admin/requests", params={"tenant": "acmee"})
    assert r.status_code == 404
    assert "Known tenants: acme, globex." in r.json()["error"]["message"]
    for headers in ({}, {"Authorization": f"Bearer {ACME.key}"}):
        r = httpx.get(gw.url + "/admin/requests", headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_the_cli_lists_requests_by_client_id(gw: Any) -> None:
    rid = f"cli-{uuid.uuid4().hex[:8]}"
    ids = [chat(gw, ACME, rid).headers["x-gateway-request-id"] for _ in range(2)]
    chat(gw, GLOBEX, rid)
    listed(gw, 3, client_request_id=rid)  # in the ledger (the CLI reads it straight)
    span = ("--from", days()["from"], "--to", days()["to"])

    doc = json.loads(run_cli("usage", "requests", *span, "--tenant", "acme",
                             "--client-request-id", rid, "--format", "json",
                             config=gw.policy_path).stdout)
    assert [x["request_id"] for x in doc["data"]] == ids[::-1]
    assert doc["data"][0]["attempts"][0]["outcome"] == "ok"

    text = run_cli("usage", "requests", "--client-request-id", rid, "--limit", "2",
                   config=gw.policy_path).stdout  # month to date
    lines = text.splitlines()
    assert lines[0].startswith("Requests ") and f"client request id {rid}" in lines[0]
    assert lines[1].split()[:3] == ["time", "request_id", "client_request_id"]
    assert [line.split()[1] for line in lines[3:5]] == [
        listed(gw, 3, client_request_id=rid)["data"][i]["request_id"] for i in (0, 1)]
    assert lines[-1].startswith("2 newest shown; more match")

    rows = list(csv.DictReader(io.StringIO(run_cli(
        "usage", "requests", *span, "--status", "200", "--key", "acme-ci", "--format", "csv",
        config=gw.policy_path).stdout)))
    assert {r["request_id"] for r in rows} == set(ids)
    assert {r["cost_usd"] for r in rows} == {"0.021"}

    for args, status, says in ((("--tenant", "acmee"), 2, "unknown tenant 'acmee'"),
                               (("--status", "nope"), 2, "or 'error'"),
                               (("--limit", "0"), 2, "from 1 to 10,000")):
        bad = run_cli("usage", "requests", *args, config=gw.policy_path, check=False)
        assert bad.returncode == status and says in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and bad.stdout == ""


def test_the_cli_finds_the_policy_by_gateway_config(gw: Any, tmp_path: Any) -> None:
    # What `kubectl exec … gateway usage requests` relies on: no --config, $GATEWAY_CONFIG.
    rid = f"env-{uuid.uuid4().hex[:8]}"
    chat(gw, ACME, rid)
    listed(gw, 1, client_request_id=rid)
    out = run_cli("usage", "requests", "--client-request-id", rid, "--format", "json",
                  env={"GATEWAY_CONFIG": str(gw.policy_path)}).stdout
    assert [x["client_request_id"] for x in json.loads(out)["data"]] == [rid]
