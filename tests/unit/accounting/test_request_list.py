"""The request listing's pure parts: filter parsing, the SQL's placeholders, rendering."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.accounting.ledger_rows import BUCKETS
from gateway.accounting.request_list import (
    MAX_LIMIT,
    ListedAttempt,
    ListedRequest,
    RequestList,
    RequestQuery,
    parse_limit,
    parse_status,
    requests_params,
    requests_sql,
)
from gateway.accounting.request_list_render import render, route

DAY = date(2026, 3, 5)


@pytest.mark.parametrize(("text", "want"), [("error", "error"), ("ERROR", "error"),
                                            ("429", 429), ("200", 200), (" 503 ", 503)])
def test_status_is_an_http_status_or_error(text: str, want: Any) -> None:
    assert parse_status(text) == want


@pytest.mark.parametrize("text", ["", "4xx", "99", "600", "-1", "errors", "2.0"])
def test_a_bad_status_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"HTTP status \(100-599\) or 'error'"):
        parse_status(text)


@pytest.mark.parametrize("text", ["0", "-5", str(MAX_LIMIT + 1), "ten", "1.5"])
def test_a_limit_outside_its_bounds_says_them(text: str) -> None:
    with pytest.raises(ValueError, match="limit must be"):
        parse_limit(text)
    assert parse_limit("1") == 1 and parse_limit(str(MAX_LIMIT)) == MAX_LIMIT


def test_a_query_refuses_an_inverted_period_and_a_bad_limit() -> None:
    with pytest.raises(ValueError, match="swap them"):
        RequestQuery(date(2026, 3, 2), date(2026, 3, 1))
    with pytest.raises(ValueError, match="limit"):
        RequestQuery(DAY, DAY, limit=0)


@pytest.mark.parametrize("query", [
    RequestQuery(DAY, DAY),
    RequestQuery(DAY, DAY, tenant="acme", status="error"),
    RequestQuery(DAY, DAY, model="chat", status=429, key_id="k", client_request_id="c"),
])
@pytest.mark.parametrize("ph", ["?", "%s"])
def test_the_sql_has_one_placeholder_per_parameter(query: RequestQuery, ph: str) -> None:
    sql = requests_sql(query, ph)
    params = requests_params(query)
    assert sql.count(ph) == len(params)
    assert params[-1] == query.limit + 1  # one more than shown: tells whether more match
    assert "ORDER BY ts DESC" in sql
    if query.status == "error":
        assert "status >= 400" in sql


def _attempt(dep: str, outcome: str, status: int | None, cost: str,
             error: str | None = None, **tokens: int) -> ListedAttempt:
    return ListedAttempt(0, dep, dep.split("/")[0], "m", outcome, status, 12.5,
                         {b: tokens.get(b, 0) for b in BUCKETS}, "provider" if tokens else None,
                         Decimal(cost), error)


def _request(**kw: Any) -> ListedRequest:
    base: dict[str, Any] = dict(
        request_id="gw-1", client_request_id="dup-1",
        ts=datetime(2026, 3, 5, 10, 11, 12, 345678, tzinfo=UTC), tenant="acme", key_id="acme-ci",
        model="chat", endpoint="chat", stream=False, status=200, error_code=None,
        error_class=None, latency_ms=40.04, ttft_ms=None, client_disconnected=False,
        cost_usd=Decimal("0.021"),
        attempts=(_attempt("a/m", "error", 503, "0", "HTTP 503: http://10.0.0.7 said no"),
                  _attempt("b/m", "ok", 200, "0.021", input_uncached=11, output=5)))
    base.update(kw)
    return ListedRequest(**base)


def test_a_request_sums_its_attempts_and_names_its_route() -> None:
    r = _request()
    assert r.tokens["input_uncached"] == 11 and r.total_tokens == 16
    assert r.deployment == "b/m"
    assert route(r) == "a/m error 503 > b/m ok 200"
    assert _request(attempts=()).deployment is None and route(_request(attempts=())) == ""


def test_json_carries_both_ids_money_as_strings_and_each_attempt() -> None:
    listing = RequestList(RequestQuery(DAY, DAY, status="error"), [_request()], has_more=True)
    doc = json.loads(render(listing, "json"))
    assert doc["filters"]["status"] == "error" and doc["has_more"] is True
    [row] = doc["data"]
    assert (row["request_id"], row["client_request_id"]) == ("gw-1", "dup-1")
    assert row["ts"] == "2026-03-05T10:11:12.345678Z"
    assert row["cost_usd"] == "0.021" and row["total_tokens"] == 16
    assert [(a["deployment"], a["outcome"], a["status"], a["cost_usd"]) for a in
            row["attempts"]] == [("a/m", "error", 503, "0"), ("b/m", "ok", 200, "0.021")]
    assert row["attempts"][0]["error"].startswith("HTTP 503")


def test_a_tenants_view_leaves_out_error_text_and_exception_classes() -> None:
    listing = RequestList(RequestQuery(DAY, DAY),
                          [_request(status=500, error_class="KeyError", error_code="internal")])
    for fmt in ("json", "csv"):
        text = render(listing, fmt, operator=False)  # type: ignore[arg-type]
        assert "10.0.0.7" not in text and "KeyError" not in text and "error_class" not in text
        assert "gw-1" in text and "dup-1" in text and "internal" in text
    assert "KeyError" in render(listing, "json") and "10.0.0.7" in render(listing, "json")


def test_csv_is_one_row_per_request() -> None:
    listing = RequestList(RequestQuery(DAY, DAY), [_request(), _request(request_id="gw-2")])
    rows = list(csv.DictReader(io.StringIO(render(listing, "csv"))))
    assert [r["request_id"] for r in rows] == ["gw-1", "gw-2"]
    assert rows[0]["route"] == "a/m error 503 > b/m ok 200" and rows[0]["attempts"] == "2"
    assert rows[0]["cost_usd"] == "0.021" and rows[0]["stream"] == "false"


def test_the_table_names_the_filters_and_says_when_more_match() -> None:
    q = RequestQuery(DAY, DAY, tenant="acme", client_request_id="dup-1", limit=1)
    text = render(RequestList(q, [_request()], has_more=True), "table")
    lines = text.splitlines()
    assert lines[0] == ("Requests 2026-03-05 .. 2026-03-05 (UTC, inclusive), newest first, "
                        "tenant acme, client request id dup-1")
    assert lines[1].split() == ["time", "request_id", "client_request_id", "tenant", "key",
                                "model", "status", "route", "total_tokens", "cost_usd",
                                "latency_ms"]
    assert lines[3].startswith("2026-03-05T10:11:12Z  gw-1")
    assert lines[-1].startswith("1 newest shown; more match: raise --limit")
    empty = render(RequestList(RequestQuery(DAY, DAY)), "table").splitlines()
    assert empty[-1] == "0 requests" and len(empty) == 2
