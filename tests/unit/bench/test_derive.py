"""What a run's numbers are compared with: each row with direct and the bare pass-through of
its own API, a Responses row with its target's chat row, and issue 10's verdict on them."""

from __future__ import annotations

from typing import Any

import pytest

from bench.overhead.derive import check_targets, derive


def _row(target: str, api: str, cpu: float | None, p50_us: float, ttft_ms: float,
         stream_cpu: float | None = None) -> dict[str, Any]:
    def runs(v: float | None) -> list[dict[str, Any]]:
        return [{"proxy_cpu_us_per_request": v}] if v is not None else [{}]

    return {"target": target, "api": api, "label": target,
            "a_latency": {"latency_us": {"p50": p50_us, "p99": 2 * p50_us}},
            "b_throughput": {"rps": 1e6 / cpu if cpu else 100_000.0},
            "c_stream": {"ttft_ms": {"p50": ttft_ms, "p99": ttft_ms},
                         "total_ms": {"p50": 100.0}},
            "runs": {"b_throughput": runs(cpu), "c_stream": runs(stream_cpu)}}


@pytest.fixture
def results() -> dict[str, dict[str, Any]]:
    return {
        "direct": _row("direct", "chat", None, 10, 10.0),
        "bare-aiohttp": _row("bare-aiohttp", "chat", 150, 310, 10.5, 800),
        "gateway": _row("gateway", "chat", 300, 510, 11.0, 1000),
        "direct/responses": _row("direct", "responses", None, 20, 10.0),
        "bare-aiohttp/responses": _row("bare-aiohttp", "responses", 160, 420, 10.5, 800),
        "gateway/responses-native": _row("gateway", "responses", 310, 620, 11.0, 990),
        "gateway/responses-stored": _row("gateway", "responses", 360, 800, 11.0, 1200),
        "gateway/responses-translated": _row("gateway", "responses", 330, 640, 11.0, 1300),
    }


def test_a_responses_row_is_compared_with_direct_and_bare_through_responses(
        results: dict[str, dict[str, Any]]) -> None:
    d = derive(results)
    native = d["gateway/responses-native"]
    assert native["added_p50_us"] == 600            # over direct/responses (20), not direct
    assert native["added_p50_vs_bare"] == pytest.approx(600 / 400)
    assert native["own_cpu_us_per_request"] == 150  # 310 − bare's 160
    assert native["rps_vs_bare"] == pytest.approx(160 / 310)
    assert d["gateway"]["own_cpu_us_per_request"] == 150  # 300 − bare's 150


def test_a_responses_row_is_set_beside_its_targets_chat_row(
        results: dict[str, dict[str, Any]]) -> None:
    d = derive(results)
    assert d["gateway/responses-native"]["cpu_vs_chat"] == pytest.approx(310 / 300)
    assert d["gateway/responses-native"]["cpu_stream_vs_chat"] == pytest.approx(0.99)
    assert d["gateway/responses-native"]["own_cpu_vs_chat"] == pytest.approx(1.0)
    assert d["bare-aiohttp/responses"]["cpu_vs_chat"] == pytest.approx(160 / 150)
    assert "cpu_vs_chat" not in d["gateway"]


def test_the_native_pass_through_verdict_is_against_chats_cost(
        results: dict[str, dict[str, Any]]) -> None:
    checks = {c["target"]: c for c in check_targets(results, derive(results), "gateway")}
    per_request = checks["Responses native vs chat: CPU µs/request at c=64"]
    assert (per_request["value"], per_request["met"]) == (1.03, False)
    per_stream = checks["Responses native vs chat: CPU µs/stream at c=16"]
    assert (per_stream["value"], per_stream["met"]) == (0.99, True)
    translated = checks["Responses translated vs chat: CPU µs/request at c=64"]
    assert translated["met"] is None and translated["value"] == 1.1


def test_results_without_responses_rows_derive_as_before() -> None:
    chat_only = {k: {kk: vv for kk, vv in v.items() if kk not in ("api", "target")}
                 for k, v in (("direct", _row("direct", "chat", None, 10, 10.0)),
                              ("bare-aiohttp", _row("bare-aiohttp", "chat", 150, 310, 10.5)),
                              ("gateway", _row("gateway", "chat", 300, 510, 11.0)))}
    d = derive(chat_only)
    assert d["gateway"]["added_p50_vs_bare"] == pytest.approx(500 / 300)
    assert not any(c["target"].startswith("Responses")
                   for c in check_targets(chat_only, d, "gateway"))
