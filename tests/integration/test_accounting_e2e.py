"""Accounting exactness, end to end: every way a request can end, through the `openai` SDK and
the real gateway, leaves a ledger record whose per-attempt token buckets are exactly what the
upstream reported (or the documented estimate, flagged as such), priced to the exact Decimal
from the policy — and the finance views (`gateway usage report` json/csv, `GET /admin/usage`)
add up to the ledger's own sums. The client meanwhile sees exactly what the provider would have
sent it: no usage chunk unless it asked for one.

One gateway, one PostgreSQL schema and one Redis prefix serve the whole module (a fresh
gateway per case would triple its run time); each case has its own request id and resets the
fakes, and the report checks compare against the whole ledger, so they hold after any subset.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import bpe_openai
import httpx
import openai
import pytest

from gateway import cli
from gateway.accounting.ledger_rows import BUCKETS
from tests.fakes.base import wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.tenancy_support import (
    LedgerDB,
    admin,
    fake_provider,
    fresh_prefix,
    fresh_schema,
    policy_key,
    price,
    run_cli,
    sdk,
    started,
    tenant_policy,
)

KEY = policy_key("acme-fin", "finance-test")
PROMPT = "Tell me about the lighthouse keeper who counted every wave."
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": PROMPT}]
PROMPT_TOKENS = 11  # what the fakes report

# USD per million tokens, one distinct price list per deployment, with cache and reasoning
# priced apart from input and output so a token in the wrong bucket changes the cost.
PRICES: dict[str, dict[str, str]] = {
    "oa/m": {"input": "0.15", "cache_read": "0.075", "output": "0.6", "reasoning": "2.4"},
    "vl/v": {"input": "0.05", "output": "0.1"},
    "dr/d": {"input": "3", "output": "15"},
    "flaky/f": {"input": "5", "output": "20"},
    "bk/b": {"input": "0.5", "cache_read": "0.25", "output": "1.5"},
}


@dataclass
class Env:
    gw: Gateway
    db: LedgerDB
    oa: FakeOpenAI
    vl: FakeOpenAI
    dr: FakeOpenAI
    flaky: FakeOpenAI
    bk: FakeOpenAI

    @property
    def fakes(self) -> list[FakeOpenAI]:
        return [self.oa, self.vl, self.dr, self.flaky, self.bk]


def _deployment(provider: str, model: str) -> dict[str, Any]:
    return {"provider": provider, "model": model, "pricing": [PRICES[f"{provider}/{model}"]]}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    schemas, prefixes = fresh_schema(), fresh_prefix()
    schema, prefix = next(schemas), next(prefixes)
    fakes = {n: started(FakeOpenAI(n, vllm=(n == "vl"))) for n in ("oa", "vl", "dr", "flaky", "bk")}
    tmp = Path(tempfile.mkdtemp(prefix="gw-acct-"))
    policy = tenant_policy(
        tmp, schema, prefix,
        {"oa": fake_provider(fakes["oa"]),
         "vl": fake_provider(fakes["vl"], kind="vllm"),
         "dr": fake_provider(fakes["dr"], drain_on_disconnect=True),
         "flaky": fake_provider(fakes["flaky"]),
         "bk": fake_provider(fakes["bk"])},
        {"chat": {"deployments": [_deployment("oa", "m")]},
         "vchat": {"deployments": [_deployment("vl", "v")]},
         "dchat": {"deployments": [_deployment("dr", "d")]},
         "fb": {"deployments": [_deployment("flaky", "f")], "fallbacks": ["fb-backup"]},
         "fb-backup": {"deployments": [_deployment("bk", "b")]}},
        {"acme": {"keys": [KEY.entry()], "key_limits": {"rpm": 100_000},
                  "budget": {"monthly_usd": "1000"}}})
    gw = Gateway(policy, tmp=tmp).start()
    try:
        yield Env(gw, LedgerDB(schema), **fakes)
    finally:
        gw.stop()  # flushes the ledger before the schema goes
        for f in fakes.values():
            f.stop()
        for gen in (schemas, prefixes):
            with contextlib.suppress(StopIteration):
                next(gen)


@pytest.fixture(autouse=True)
def reset(env: Env) -> None:
    """Each case scripts the fakes from their defaults."""
    for f in env.fakes:
        f.words, f.cached_tokens, f.reasoning_tokens = 5, 0, 0
        f.usage_on_last_content_chunk = f.omit_usage = False
        f.chunk_delay = 0.0
        f.client_gone = f.completed_streams = 0
        while f.take_fault() is not None:
            pass


_ids = iter(range(1_000_000))


def new_id(tag: str) -> str:
    return f"acct-{tag}-{next(_ids)}-{datetime.now(UTC).strftime('%H%M%S%f')}"


# ---- what the client sees --------------------------------------------------------------------

def sse_events(lines: Any) -> list[Any]:
    """`data:` payloads of an SSE body, JSON-decoded, `created` zeroed (it is a clock)."""
    out: list[Any] = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        out.append(data if data == "[DONE]" else {**json.loads(data), "created": 0})
    return out


def direct(fake: FakeOpenAI, body: dict[str, Any], upstream_model: str, public: str) -> Any:
    """What the provider itself answers the client's body (the model renamed as the gateway
    does): the gateway's reply must equal it."""
    r = httpx.post(fake.url + "/v1/chat/completions", json={**body, "model": upstream_model},
                   timeout=30)
    if body.get("stream"):
        events = sse_events(r.text.splitlines())
        return [e if e == "[DONE]" else {**e, "model": public} for e in events]
    return {**r.json(), "model": public, "created": 0}


def call_stream(env: Env, rid: str, body: dict[str, Any]) -> tuple[httpx.Headers, list[Any]]:
    client = sdk(env.gw.base_url, KEY.key)
    with client.chat.completions.with_streaming_response.create(
            **body, extra_headers={"x-request-id": rid}) as r:
        return r.headers, sse_events(r.iter_lines())


def call_plain(env: Env, rid: str, body: dict[str, Any]) -> Any:
    client = sdk(env.gw.base_url, KEY.key)
    r = client.chat.completions.with_raw_response.create(**body,
                                                        extra_headers={"x-request-id": rid})
    assert r.parse().choices  # the SDK reads it as a ChatCompletion
    return {**r.http_response.json(), "created": 0}


# ---- what the ledger holds -------------------------------------------------------------------

def attempt(deployment: str, outcome: str, source: str | None, **tokens: int) -> dict[str, Any]:
    buckets = {b: tokens.get(b, 0) for b in BUCKETS}
    cost = price(buckets, PRICES[deployment]) if source else Decimal(0)
    return {"deployment": deployment, "outcome": outcome, "usage_source": source,
            **buckets, "cost_usd": cost}


def check_ledger(env: Env, rid: str, model: str, stream: bool, want: list[dict[str, Any]],
                 **request: Any) -> dict[str, Any]:
    row = env.db.wait_request(rid)
    got = [{k: a[k] for k in want[0]} for a in env.db.attempts(rid)]
    assert got == want
    assert (row["tenant"], row["key_id"], row["model"], row["stream"]) == \
        ("acme", KEY.id, model, stream)
    assert row["attempts"] == len(want)
    assert row["cost_usd"] == sum((a["cost_usd"] for a in want), Decimal(0))
    for k, v in request.items():
        assert row[k] == v, (k, row[k], v)
    check_reports(env)
    return row


def _report_totals(doc: dict[str, Any]) -> dict[str, Any]:
    t = doc["totals"]
    assert t["gpu_cost_usd"] == "0"
    return {"requests": t["requests"], "attempts": t["attempts"],
            **{b: t[b] for b in BUCKETS}, "cost_usd": Decimal(t["cost_usd"])}


def _csv_totals(text: str) -> dict[str, Any]:
    rows = list(csv.DictReader(io.StringIO(text)))
    [t] = [r for r in rows if r["kind"] == "total"]
    usage = [r for r in rows if r["kind"] == "usage"]
    # The total row is the sum of the rows above it.
    assert sum((Decimal(r["cost_usd"]) for r in usage), Decimal(0)) == Decimal(t["cost_usd"])
    return {"requests": int(t["requests"]), "attempts": int(t["attempts"]),
            **{b: int(t[b]) for b in BUCKETS}, "cost_usd": Decimal(t["cost_usd"])}


def _days() -> tuple[str, str]:
    today = datetime.now(UTC).date()  # a run across midnight stays inside the range
    return (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()


def _cli_report(env: Env, fmt: str) -> str:
    """`gateway usage report` through its real entry point, in-process (a subprocess per case
    would cost a second each; `test_cli_report_subprocess_equals_the_ledger` runs one)."""
    start, end = _days()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["usage", "report", "--config", str(env.gw.policy_path),
                         "--from", start, "--to", end, "--format", fmt]) == 0
    return out.getvalue()


def check_reports(env: Env) -> None:
    t = env.db.totals()
    truth = {"requests": t["requests"], "attempts": t["attempts"],
             **{b: t[b] for b in BUCKETS}, "cost_usd": t["cost_usd"]}
    assert t["attempt_cost_usd"] == t["cost_usd"]  # a request costs the sum of its attempts
    start, end = _days()
    q = f"/admin/usage?from={start}&to={end}"
    r = admin("GET", env.gw.url, q)
    assert r.status_code == 200, r.text
    assert _report_totals(r.json()) == truth
    r = admin("GET", env.gw.url, q + "&format=csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert _csv_totals(r.text) == truth
    assert _report_totals(json.loads(_cli_report(env, "json"))) == truth
    assert _csv_totals(_cli_report(env, "csv")) == truth


# ---- the conformance matrix: requests that finish ----------------------------------------------

MODES = {
    "non-stream": dict(stream=False, include=False, on_last=False),
    "stream": dict(stream=True, include=False, on_last=False),
    "stream-include_usage": dict(stream=True, include=True, on_last=False),
    "stream-usage_on_last_content_chunk": dict(stream=True, include=False, on_last=True),
    "stream-include_usage-usage_on_last_content_chunk": dict(stream=True, include=True,
                                                             on_last=True),
}


def _body(model: str, stream: bool, include: bool, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, **extra}
    if stream:
        body["stream"] = True
        if include:
            body["stream_options"] = {"include_usage": True}
    return body


@pytest.mark.parametrize("cached,reasoning", [(0, 0), (4, 3)], ids=["plain", "cached+reasoning"])
@pytest.mark.parametrize("mode", list(MODES))
def test_finished_request_records_exactly_the_provider_usage(
        env: Env, mode: str, cached: int, reasoning: int) -> None:
    m = MODES[mode]
    env.oa.cached_tokens, env.oa.reasoning_tokens = cached, reasoning
    env.oa.usage_on_last_content_chunk = m["on_last"]
    rid = new_id(mode)
    body = _body("chat", m["stream"], m["include"])
    if m["stream"]:
        headers, got = call_stream(env, rid, body)
        assert headers["content-type"].startswith("text/event-stream")
        usage_events = [e for e in got if e != "[DONE]" and "usage" in e]
        if not m["include"]:
            assert usage_events == []  # not asked for: not a key, not a chunk
    else:
        got = call_plain(env, rid, body)
    check_ledger(env, rid, "chat", m["stream"], [attempt(
        "oa/m", "ok", "provider", input_uncached=PROMPT_TOKENS - cached, cache_read=cached,
        output=5, reasoning=reasoning)], status=200, client_disconnected=False)
    assert got == direct(env.oa, body, "m", "chat")


@pytest.mark.parametrize("include", [False, True], ids=["stream", "stream-include_usage"])
def test_vllm_stream_records_the_final_usage_and_hides_continuous_stats(
        env: Env, include: bool) -> None:
    rid = new_id("vllm")
    body = _body("vchat", True, include)
    _, got = call_stream(env, rid, body)
    # The gateway asked vLLM for usage on every chunk; the client sees none of it.
    sent = env.vl.requests[-1].body["stream_options"]
    assert sent == {"include_usage": True, "continuous_usage_stats": True}
    # vLLM itself leaves `usage` out of content chunks (it serialises with exclude_unset); the
    # fake writes `"usage": null` there as OpenAI does. The SDK reads both as None.
    want = [e if e == "[DONE]" or e.get("usage", 0) is not None
            else {k: v for k, v in e.items() if k != "usage"}
            for e in direct(env.vl, body, "v", "vchat")]
    assert got == want
    check_ledger(env, rid, "vchat", True, [attempt(
        "vl/v", "ok", "provider", input_uncached=PROMPT_TOKENS, output=5)])


# ---- no usage from the provider: the estimate, flagged -----------------------------------------

def _o200k(text: str) -> int:
    return len(bpe_openai.get_encoding("o200k_base").encode_ordinary(text))


def _prompt_estimate() -> int:
    # OpenAI's cookbook count, as docs/accounting.md says: 3 per message + role + content, and
    # 3 to prime the reply.
    return sum(3 + _o200k(m["role"]) + _o200k(m["content"]) for m in MESSAGES) + 3


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream-include_usage"])
def test_provider_without_usage_is_estimated_and_flagged(env: Env, stream: bool) -> None:
    env.oa.omit_usage = True
    rid = new_id("nousage")
    body = _body("chat", stream, include=True)
    if stream:
        _, got = call_stream(env, rid, body)
        # Output estimate of a stream: one token per chunk the client received.
        output = len([e for e in got if e != "[DONE]" and e["choices"]])
    else:
        got = call_plain(env, rid, body)
        output = _o200k(got["choices"][0]["message"]["content"])
    assert got == direct(env.oa, body, "m", "chat")
    check_ledger(env, rid, "chat", stream, [attempt(
        "oa/m", "ok", "estimated", input_uncached=_prompt_estimate(), output=output)])


# ---- fallbacks and failures ------------------------------------------------------------------

def test_stream_dropped_before_the_first_byte_falls_back_and_bills_only_the_fallback(
        env: Env) -> None:
    env.flaky.drop_stream_after(0)  # the stream opens, then the connection drops
    env.bk.cached_tokens = 2
    rid = new_id("fallback-stream")
    body = _body("fb", True, include=False)
    headers, got = call_stream(env, rid, body)
    assert headers["x-gateway-deployment"] == "bk/b"
    check_ledger(env, rid, "fb", True, [
        attempt("flaky/f", "error", None),  # nothing generated, nothing billed
        attempt("bk/b", "ok", "provider", input_uncached=PROMPT_TOKENS - 2, cache_read=2,
                output=5)], status=200)
    assert got == direct(env.bk, body, "b", "fb")
    # Two attempts were made, as on a non-streaming fallback.
    assert headers["x-gateway-attempts"] == "2"


def test_non_stream_503_falls_back_and_bills_only_the_fallback(env: Env) -> None:
    env.flaky.fail_next(1, status=503)
    rid = new_id("fallback-503")
    body = _body("fb", False, False)
    got = call_plain(env, rid, body)
    assert got == direct(env.bk, body, "b", "fb")
    rows = check_ledger(env, rid, "fb", False, [
        attempt("flaky/f", "error", None),
        attempt("bk/b", "ok", "provider", input_uncached=PROMPT_TOKENS, output=5)])
    assert rows["status"] == 200
    assert env.db.attempts(rid)[0]["status"] == 503


def _read_until_error(env: Env, body: dict[str, Any], rid: str) -> list[Any]:
    client = sdk(env.gw.base_url, KEY.key)
    chunks: list[Any] = []
    # The failure after the first byte reaches the SDK as an error event, never a silent end.
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(**body, extra_headers={"x-request-id": rid}):
            chunks.append(c)
    assert "mid-stream" in str(e.value.message) or "before it was complete" in str(e.value.message)
    return chunks


def test_vllm_failure_after_bytes_is_billed_its_last_reported_usage(env: Env) -> None:
    env.vl.drop_stream_after(3)  # role chunk + 2 words, each with vLLM's running usage
    rid = new_id("vllm-midstream")
    chunks = _read_until_error(env, _body("vchat", True, False), rid)
    assert len(chunks) == 3 and all(c.usage is None for c in chunks)
    row = check_ledger(env, rid, "vchat", True, [attempt(
        "vl/v", "failed_midstream", "provider_partial", input_uncached=PROMPT_TOKENS,
        output=2)], status=200)
    assert row["error_code"] in ("upstream_stream_error", "upstream_stream_truncated")


def test_failure_after_bytes_without_usage_is_estimated(env: Env) -> None:
    env.oa.drop_stream_after(3)
    rid = new_id("oa-midstream")
    chunks = _read_until_error(env, _body("chat", True, False), rid)
    assert len(chunks) == 3
    check_ledger(env, rid, "chat", True, [attempt(
        "oa/m", "failed_midstream", "estimated", input_uncached=_prompt_estimate(),
        output=len(chunks))], status=200)


# ---- the client goes away --------------------------------------------------------------------

def _read_then_leave(env: Env, body: dict[str, Any], rid: str, n: int) -> None:
    client = sdk(env.gw.base_url, KEY.key)
    stream = client.chat.completions.create(**body, extra_headers={"x-request-id": rid})
    for i, _ in enumerate(stream, 1):
        if i == n:
            break
    stream.close()  # the connection closes mid-stream


def test_disconnect_from_vllm_cancels_upstream_and_bills_streamed_tokens(env: Env) -> None:
    # Four events go out (usage 0..3 completion tokens), then the upstream holds the stream:
    # what the gateway read is known exactly when the client leaves.
    env.vl.words = 20
    env.vl.stall_stream_after(4, seconds=1.5)
    rid = new_id("vllm-cancel")
    _read_then_leave(env, _body("vchat", True, False), rid, 4)
    check_ledger(env, rid, "vchat", True, [attempt(
        "vl/v", "cancelled", "provider_partial", input_uncached=PROMPT_TOKENS, output=3)],
        client_disconnected=True)
    # The upstream request was cut: the fake could not write past the stall.
    assert wait_until(lambda: env.vl.client_gone == 1, timeout=10)
    assert env.vl.completed_streams == 0


def test_disconnect_from_drain_provider_reads_to_the_end_for_exact_usage(env: Env) -> None:
    env.dr.words = 20
    env.dr.chunk_delay = 0.01
    env.dr.cached_tokens = 3
    rid = new_id("drain")
    _read_then_leave(env, _body("dchat", True, False), rid, 3)
    check_ledger(env, rid, "dchat", True, [attempt(
        "dr/d", "drained", "provider", input_uncached=PROMPT_TOKENS - 3, cache_read=3,
        output=20)], client_disconnected=True)
    # 20 output tokens: the usage chunk after the last word was read, long after the client
    # left after 3 chunks.


# ---- the CLI as an admin runs it ---------------------------------------------------------------

def test_cli_report_subprocess_equals_the_ledger(env: Env) -> None:
    rid = new_id("cli")
    call_plain(env, rid, _body("chat", False, False))
    env.db.wait_request(rid)
    t = env.db.totals()
    start, end = _days()
    for fmt, parse in (("json", lambda s: _report_totals(json.loads(s))), ("csv", _csv_totals)):
        out = run_cli("usage", "report", "--from", start, "--to", end, "--format", fmt,
                      config=env.gw.policy_path)
        assert parse(out.stdout) == {"requests": t["requests"], "attempts": t["attempts"],
                                     **{b: t[b] for b in BUCKETS}, "cost_usd": t["cost_usd"]}
