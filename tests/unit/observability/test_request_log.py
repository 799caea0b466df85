"""The per-request log line (observability/logs.py RequestLog): one JSON object per line."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal

from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.observability.logs import RequestLog


def _record(tenant: str = "acme") -> RequestRecord:
    rec = RequestRecord("req-1", datetime(2026, 12, 2, tzinfo=UTC), tenant, "key-1", "gpt",
                        "chat", False, 200, 12.345, None)
    rec.attempts.append(AttemptRecord("oa/gpt", "oa", "gpt-4o", "ok", 200,
                                      Usage(10, 0, 0, 5, 0), 10.0, cost_usd=Decimal("0.25")))
    return rec


def _lines(*records: RequestRecord) -> list[str]:
    out = io.StringIO()
    log = RequestLog(stream=out)
    log._json = True  # whatever GATEWAY_LOG_FORMAT the test process has
    log._scheduled = True  # no event loop here: flush by hand
    for r in records:
        log.emit(r)
    log.flush()
    return out.getvalue().splitlines()


def test_a_line_is_one_json_object_with_the_request_fields() -> None:
    [line] = _lines(_record())
    got = json.loads(line)
    assert got["logger"] == "gateway.requests" and got["msg"] == "request"
    assert got["level"] == "info" and got["ts"].endswith("Z")
    assert got["request_id"] == "req-1" and got["tenant"] == "acme"
    assert got["latency_ms"] == 12.35 and got["ttft_ms"] is None
    assert got["attempts"] == ["oa/gpt:ok"]
    assert got["prompt_tokens"] == 10 and got["completion_tokens"] == 5
    assert got["cost_usd"] == "0.25"


def test_non_ascii_names_stay_escaped_so_the_log_stays_ascii() -> None:
    lines = _lines(_record("zürich-東京"), _record())
    assert all(line.isascii() for line in lines)
    assert json.loads(lines[0])["tenant"] == "zürich-東京"
    assert json.loads(lines[1])["tenant"] == "acme"
