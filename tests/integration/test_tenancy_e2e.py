"""Tenants end to end through the official `openai` SDK: 401 for a missing or unknown key, 403
for a model the tenant may not use, 429 with the headers the SDK obeys, 402 when the budget is
spent, and keys issued and revoked at run time (admin API, CLI) seen by a second replica.

Real Redis (a fresh key prefix per test) and real PostgreSQL (a fresh schema per test).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from gateway.limits.budget import period_end
from tests.harness import GatewayProcess
from tests.integration.tenancy_support import (
    MSG,
    StampedFake,
    admin,
    fake_provider,
    message,
    pg_schema,
    policy_key,
    poll,
    redis_prefix,
    run_cli,
    sdk,
    tenant_policy,
    up,
)

__all__ = ["pg_schema", "redis_prefix", "up"]  # fixtures used by this module

ACME = policy_key("acme-ci", "ci-bot")
FREE = policy_key("free-1")
BROKE = policy_key("broke-1")
# USD per million tokens: the fake reports 11 prompt + 5 completion tokens per request.
CHAT_PRICE = {"input": "1000", "output": "2000"}


def policy(tmp: Any, schema: str, prefix: str, up: StampedFake, **tenant_extra: Any
           ) -> dict[str, Any]:
    acme: dict[str, Any] = {"models": ["chat"], "keys": [ACME.entry()], **tenant_extra}
    return tenant_policy(
        tmp, schema, prefix, {"up": fake_provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m", "pricing": [CHAT_PRICE]}]},
         "secret": {"deployments": [{"provider": "up", "model": "s"}]}},
        {"acme": acme,
         "free": {"keys": [FREE.entry()]},
         "broke": {"keys": [BROKE.entry()], "budget": {"monthly_usd": "0.04"}}})


@pytest.fixture
def gw(pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any, gateway: Any) -> Any:
    # The schema is requested before `gateway` so it is dropped only after the gateway stopped
    # (fixtures tear down in reverse order) and flushed its last records.
    return gateway(policy(tmp_path, pg_schema, redis_prefix, up))


def go_duration(text: str) -> float:
    """`20ms`, `1s`, `59.5s`, `6m0s` (Go's Duration.String, as OpenAI writes resets) → s."""
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
    assert m is not None and text, f"not a duration: {text!r}"
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


# ---- 401 / 403 -------------------------------------------------------------------------------

def test_missing_and_unknown_keys_are_refused_as_invalid_api_key(gw: Any, up: StampedFake
                                                                   ) -> None:
    unknown = "gw-" + "x" * 40 + "yz"
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(gw.base_url, unknown).chat.completions.create(model="chat", messages=MSG)
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"
    assert "gw-xx***yz" in message(e.value) and unknown not in message(e.value)

    with pytest.raises(openai.AuthenticationError) as e:
        sdk(gw.base_url, "unused").chat.completions.create(
            model="chat", messages=MSG, extra_headers={"Authorization": openai.Omit()})
    assert e.value.code == "invalid_api_key"
    assert "didn't provide an API key" in message(e.value)

    with pytest.raises(openai.AuthenticationError):
        sdk(gw.base_url, unknown).models.list()
    assert up.requests == []  # nothing unauthenticated reached the upstream


def test_model_outside_the_tenant_is_403_and_models_lists_only_its_own(gw: Any,
                                                                       up: StampedFake) -> None:
    acme = sdk(gw.base_url, ACME.key)
    with pytest.raises(openai.PermissionDeniedError) as e:
        acme.chat.completions.create(model="secret", messages=MSG)
    assert e.value.status_code == 403
    assert message(e.value) == \
        'Model "secret" is not available to this key. Available: chat.'
    assert up.requests == []
    assert [m.id for m in acme.models.list()] == ["chat"]
    # A tenant without a model list sees (and may use) every model.
    free = sdk(gw.base_url, FREE.key)
    assert sorted(m.id for m in free.models.list()) == ["chat", "secret"]
    assert free.chat.completions.create(model="secret", messages=MSG).choices


# ---- 429 -------------------------------------------------------------------------------------

def test_rpm_limit_429_carries_headers_and_the_sdk_waits_retry_after_then_succeeds(
        pg_schema: str, redis_prefix: str, up: StampedFake, tmp_path: Any, gateway: Any
) -> None:
    # 60 rpm: a bucket of 60 requests, one more every second (GCRA): a refused client is told
    # to come back within a second.
    gw = gateway(policy(tmp_path, pg_schema, redis_prefix, up,
                        key_limits={"rpm": 60, "tpm": 100_000}))
    seen: list[tuple[int, httpx.Headers, bytes, float]] = []

    def hook(r: Any) -> None:
        body = r.read() if r.status_code >= 400 else b""
        seen.append((r.status_code, r.headers, body, time.monotonic()))

    client = sdk(gw.base_url, ACME.key, max_retries=1,
                 http_client=openai.DefaultHttpxClient(event_hooks={"response": [hook]}))

    first = client.chat.completions.with_raw_response.create(model="chat", messages=MSG,
                                                             max_tokens=5)
    # Admitted responses carry OpenAI's headers, with what is left after this request.
    h = first.headers
    assert h["x-ratelimit-limit-requests"] == "60"
    assert h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-reset-requests"] == "1s"  # one request refills in 60 s / 60
    assert h["x-ratelimit-limit-tokens"] == "100000"
    estimate = 100_000 - int(h["x-ratelimit-remaining-tokens"])
    assert 5 < estimate < 40  # prompt estimate + max_tokens
    assert go_duration(h["x-ratelimit-reset-tokens"]) == pytest.approx(estimate * 0.0006,
                                                                      abs=0.0006)
    assert "retry-after" not in h

    admitted = 1
    for _ in range(300):
        start = len(seen)
        # max_retries=1: a 429 is retried once, after the Retry-After the gateway sent.
        r = client.chat.completions.with_raw_response.create(model="chat", messages=MSG,
                                                             max_tokens=5)
        statuses = [s[0] for s in seen[start:]]
        if 429 in statuses:
            break
        admitted += 1
    else:
        pytest.fail("300 requests at 60 rpm were never rate limited")
    assert admitted >= 60  # the full bucket was served before the first refusal
    assert statuses == [429, 200]
    _, h429, body, refused_at = seen[start]
    assert b'"code": "rate_limit_exceeded"' in body or b'"code":"rate_limit_exceeded"' in body
    assert b'Rate limit reached for key \\"ci-bot\\" (tenant \\"acme\\"): 60 requests per ' \
           b"minute. Retry after 1 s." in body
    retry_ms = int(h429["retry-after-ms"])
    assert 1 <= retry_ms <= 1000  # at most one refill interval away
    assert h429["retry-after"] == "1"
    assert h429["x-ratelimit-limit-requests"] == "60"
    assert h429["x-ratelimit-remaining-requests"] == "0"
    # The bucket is full again once the TAT has passed: 59 intervals plus the wait.
    assert go_duration(h429["x-ratelimit-reset-requests"]) == pytest.approx(
        59 + retry_ms / 1000, abs=0.002)
    # The SDK slept Retry-After before retrying, and the retry was admitted (the bucket had
    # refilled by then): the upstream saw it no earlier than the refusal plus the wait.
    assert r.http_response.status_code == 200 and r.parse().choices
    assert len(up.arrivals) == admitted + 1  # the refusal never reached the upstream
    assert up.arrivals[-1] - refused_at >= retry_ms / 1000
    assert r.headers["x-ratelimit-remaining-requests"] == "0"


# ---- 402 -------------------------------------------------------------------------------------

def test_spent_budget_is_402_budget_exceeded_naming_the_budget_and_its_reset(gw: Any) -> None:
    client = sdk(gw.base_url, BROKE.key)
    # Each request costs 11 × $0.001 + 5 × $0.002 = $0.021 of the $0.04 monthly budget.
    served = 0
    while True:
        try:
            r = client.chat.completions.with_raw_response.create(model="chat", messages=MSG,
                                                                 max_tokens=1)
        except openai.APIStatusError as e:
            err = e
            break
        assert r.http_response.status_code == 200
        served += 1
        assert served < 10, "the budget never ran out"
    assert served == 2  # $0.021 then $0.042: the third request finds the budget used up
    assert type(err) is openai.APIStatusError and err.status_code == 402
    assert err.code == "budget_exceeded"
    assert err.type == "budget_exceeded"
    resets = {period_end("month", datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert message(err).startswith('Budget exceeded for tenant "broke": the monthly budget '
                                  "of $0.04 is used up ($0.042 spent)")
    assert any(f"It resets at {r}." in message(err) for r in resets), message(err)


# ---- keys issued at run time -----------------------------------------------------------------

def test_keys_issued_by_admin_api_and_cli_authenticate(gw: Any) -> None:
    r = admin("POST", gw.url, "/admin/keys", json={"tenant": "acme", "name": "api-issued"})
    assert r.status_code == 201, r.text
    issued = r.json()
    assert issued["key"].startswith("gw-") and issued["tenant"] == "acme"
    # Issued on this replica: usable at once.
    reply = sdk(gw.base_url, issued["key"]).chat.completions.create(model="chat", messages=MSG)
    assert reply.choices[0].message.content

    out = run_cli("keys", "create", "--tenant", "acme", "--name", "cli-issued",
                  config=gw.policy_path)
    key = out.stdout.strip()
    assert key.startswith("gw-") and "key id key_" in out.stderr
    # The CLI wrote the database; the gateway's poll picks the key up (≤ 1 s by design).
    client = sdk(gw.base_url, key)

    def works() -> bool:
        try:
            return bool(client.chat.completions.create(model="chat", messages=MSG).choices)
        except openai.AuthenticationError:
            return False

    poll(works, timeout=5, interval=0.05, what="the CLI-issued key to authenticate")
    # The key is its tenant's: the same model rules apply.
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="secret", messages=MSG)


@pytest.mark.parametrize("shared", ["db+redis", "db-only"])
def test_key_revoked_on_one_replica_is_refused_by_another(
        gw: Any, tmp_path: Any, pg_schema: str, redis_prefix: str, up: StampedFake,
        shared: str) -> None:
    other_policy = policy(tmp_path, pg_schema, redis_prefix, up)
    if shared == "db-only":
        # No Redis message reaches this replica: the key store poll alone must carry it.
        other_policy["state"] = {}
    other = GatewayProcess(other_policy, tmp=tmp_path).start()
    try:
        issued = admin("POST", gw.url, "/admin/keys", json={"tenant": "acme"}).json()
        on_a = sdk(gw.base_url, issued["key"])
        on_b = sdk(other.base_url, issued["key"])

        def status_on_b() -> int:
            try:
                on_b.chat.completions.create(model="chat", messages=MSG)
                return 200
            except openai.AuthenticationError as e:
                assert e.status_code == 401
                return 401

        poll(lambda: status_on_b() == 200, timeout=5, what="the new key on replica B")
        assert on_a.chat.completions.create(model="chat", messages=MSG).choices

        r = admin("DELETE", gw.url, f"/admin/keys/{issued['id']}")
        assert r.status_code == 200 and r.json()["revoked_at"]
        # Replica A refuses at once; B within a second by design (Redis message, or the store
        # poll every 0.5 s): poll with a deadline rather than time it.
        with pytest.raises(openai.AuthenticationError) as e:
            on_a.chat.completions.create(model="chat", messages=MSG)
        assert "was revoked" in message(e.value)
        poll(lambda: status_on_b() == 401, timeout=3, interval=0.02,
             what="replica B to refuse the revoked key")
        with pytest.raises(openai.AuthenticationError) as e:
            on_b.chat.completions.create(model="chat", messages=MSG)
        assert e.value.code == "invalid_api_key" and "was revoked" in message(e.value)
    finally:
        other.stop()
