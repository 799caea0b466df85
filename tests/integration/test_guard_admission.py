"""A `model` guard's classifier calls are admitted with the request they check, under real
limits (the memory backend and Redis): the budget holds their worst case, token rate limits
count their tokens, a tenant that cannot afford request and checks is refused before either
is spent, and every path (pass, timeout open or closed, classifier error, block) ends with
one ledger record and the hold settled to what was spent."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from gateway.accounting.estimate import estimate_prompt_tokens
from gateway.guards.classifier import CALL_OVERHEAD_TOKENS, VERDICT_MAX_TOKENS
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import records
from tests.integration.tenancy_support import (
    ADMIN_KEY,
    REDIS_URL,
    fresh_prefix,
    policy_key,
    poll,
    sdk,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
MAX_TOKENS = 10
PRICE = {"input": "1000", "output": "2000"}  # USD per million tokens, both models
M = Decimal(1_000_000)
PROMPT = estimate_prompt_tokens({"messages": MESSAGES})
# Admission's worst cases: the request on `chat`, and one input classifier call on its prompt.
REQUEST_USD = (PROMPT * Decimal(PRICE["input"]) + MAX_TOKENS * Decimal(PRICE["output"])) / M
GUARD_TOKENS = PROMPT + CALL_OVERHEAD_TOKENS + VERDICT_MAX_TOKENS
GUARD_USD = ((PROMPT + CALL_OVERHEAD_TOKENS) * Decimal(PRICE["input"])
             + VERDICT_MAX_TOKENS * Decimal(PRICE["output"])) / M

KEYS = {name: policy_key(f"{name}-k") for name in
        ("acme", "lenient", "plain", "tight", "tight-plain", "tpm", "tpm-plain", "reader")}


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "memory":
        yield {}
        return
    for prefix in fresh_prefix(REDIS_URL):
        yield {"state": {"redis_url": REDIS_URL, "key_prefix": prefix}}


@pytest.fixture
def setup(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway], tmp_path: Any,
          backend: dict[str, Any]) -> tuple[Gateway, dict[str, FakeOpenAI]]:
    fs = {"gpu": fakes("gpu", vllm=True), "cls": fakes("cls", vllm=True)}
    fs["cls"].text = lambda: ["safe"]  # type: ignore[method-assign]
    tight = str(REQUEST_USD + GUARD_USD / 2)  # the request fits; request and check do not
    tpm = PROMPT + MAX_TOKENS + GUARD_TOKENS // 2
    tenants: dict[str, Any] = {
        "acme": {"budget": {"monthly_usd": "10"}},
        "lenient": {"budget": {"monthly_usd": "10"}},
        "plain": {"budget": {"monthly_usd": "10"}},
        "tight": {"budget": {"monthly_usd": tight}},
        "tight-plain": {"budget": {"monthly_usd": tight}},
        "tpm": {"limits": {"tpm": tpm}},
        "tpm-plain": {"limits": {"tpm": tpm}},
        "reader": {"budget": {"monthly_usd": "10"}},
    }
    for name, t in tenants.items():
        t["keys"] = [KEYS[name].entry()]

    def judge(on_error: str, who: list[str]) -> dict[str, Any]:
        # 1 s: a check under a loaded CI machine's scheduling still answers in time; the
        # timeout cases delay the classifier by 2 s or more.
        return {"detector": {"kind": "model", "model": "guard-model", "timeout_s": 1.0,
                             "on_error": on_error}, "applies_to": {"tenants": who}}
    policy = simple_policy(
        tmp_path, {"gpu": provider(fs["gpu"], "vllm"), "cls": provider(fs["cls"], "vllm")},
        {"chat": {"deployments": [{"provider": "gpu", "model": "llama", "pricing": [PRICE]}]},
         "guard-model": {"deployments": [{"provider": "cls", "model": "llama-guard",
                                          "pricing": [PRICE]}]}},
        guards={"judge": judge("fail_closed", ["acme", "tight", "tpm"]),
                "judge-open": judge("fail_open", ["lenient"]),
                "judge-out": {"detector": {"kind": "model", "model": "guard-model",
                                           "timeout_s": 10}, "stage": "output",
                              "applies_to": {"tenants": ["reader"]}}},
        tenants=tenants, server={"admin_key": ADMIN_KEY}, **backend)
    return gateway(policy), fs


def _ask(gw: Gateway, tenant: str, rid: str) -> Any:
    return sdk(gw.base_url, KEYS[tenant].key, default_headers={"x-request-id": rid}) \
        .chat.completions.create(model="chat", messages=MESSAGES, max_tokens=MAX_TOKENS)


def _budget(gw: Gateway, tenant: str) -> dict[str, Decimal]:
    r = httpx.get(f"{gw.url}/admin/budgets/{tenant}",
                  headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    [b] = r.json()["budget"]
    return {k: Decimal(b[k]) for k in ("spent_usd", "reserved_usd")}


def _settled(gw: Gateway, tmp: Any, tenant: str, n: int) -> Decimal:
    """Once the tenant's `n` records are in the ledger and nothing is held: what they cost,
    which is what its budget counts as spent."""
    def done() -> Decimal | None:
        mine = [r for r in records(tmp) if r.tenant == tenant]
        b = _budget(gw, tenant)
        cost = sum((r.cost_usd for r in mine), Decimal(0))
        ok = len(mine) == n and b["reserved_usd"] == 0 and b["spent_usd"] == cost
        return (cost,) if ok else None
    cost: Decimal = poll(done, what=f"{tenant}'s {n} records settled")[0]
    return cost


def test_the_hold_covers_the_classifier_and_every_path_settles_it(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup
    # In flight (the upstream slow, after the check): the request and its check held.
    fs["gpu"].delay_next(1, seconds=1.5)
    t = threading.Thread(target=_ask, args=(gw, "acme", "adm-slow"))
    t.start()
    held = poll(lambda: _budget(gw, "acme")["reserved_usd"], what="a hold")
    t.join()
    assert held == REQUEST_USD + GUARD_USD
    spent = _settled(gw, tmp_path, "acme", 1)
    assert spent > 0  # both attempts priced (the fake's 11 + 1 and 11 + 5 tokens)

    n = 1
    # Classifier times out, fail_closed: refused; its attempt billed; nothing held.
    fs["cls"].delay_next(1, seconds=2.0)
    with pytest.raises(openai.BadRequestError):
        _ask(gw, "acme", "adm-timeout")
    n += 1
    # Classifier fails (HTTP 500), fail_closed: refused.
    fs["cls"].fail_next(1, status=500)
    with pytest.raises(openai.BadRequestError):
        _ask(gw, "acme", "adm-error")
    n += 1
    # Classifier calls the prompt unsafe: blocked.
    fs["cls"].text = lambda: ["unsafe", "\nS1"]  # type: ignore[method-assign]
    with pytest.raises(openai.BadRequestError):
        _ask(gw, "acme", "adm-unsafe")
    n += 1
    _settled(gw, tmp_path, "acme", n)
    mine = {r.client_request_id: r for r in records(tmp_path) if r.tenant == "acme"}
    assert {k: r.status for k, r in mine.items()} == {
        "adm-slow": 200, "adm-timeout": 400, "adm-error": 400, "adm-unsafe": 400}
    assert [a.outcome for a in mine["adm-unsafe"].attempts] == ["guard"]
    assert mine["adm-unsafe"].cost_usd > 0  # a refused request still paid for its check
    timed_out = mine["adm-timeout"].attempts[0]
    assert (timed_out.error or "").startswith("timeout")
    # Cut off in flight: its prompt counted (estimated) and billed, no output.
    assert timed_out.usage is not None and timed_out.usage.source == "estimated"
    assert timed_out.usage.prompt_tokens > 0 and timed_out.usage.output == 0
    assert timed_out.cost_usd > 0

    # Classifier times out, fail_open: served; the same settlement.
    fs["cls"].delay_next(1, seconds=2.0)
    assert _ask(gw, "lenient", "adm-open").choices[0].message.content
    _settled(gw, tmp_path, "lenient", 1)
    assert fs["gpu"].bodies() and len(fs["gpu"].bodies()) == 2  # adm-slow and adm-open


def test_a_tenant_that_cannot_afford_the_check_is_refused_before_anything_is_spent(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup
    # Without a guard the same budget admits the request...
    assert _ask(gw, "tight-plain", "adm-tight-plain").choices[0].message.content
    asked = len(fs["cls"].bodies())
    # ...with one, request and classifier together are over it: the usual budget refusal.
    with pytest.raises(openai.APIStatusError) as e:
        _ask(gw, "tight", "adm-tight")
    assert e.value.status_code == 402
    assert e.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert len(fs["cls"].bodies()) == asked and len(fs["gpu"].bodies()) == 1
    assert _settled(gw, tmp_path, "tight", 1) == 0  # one record, nothing spent or held
    [rec] = [r for r in records(tmp_path) if r.client_request_id == "adm-tight"]
    assert rec.status == 402 and rec.attempts == [] and rec.error_code == "budget_exceeded"


def test_classifier_tokens_count_against_the_tenants_token_limit(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup
    assert _ask(gw, "tpm-plain", "adm-tpm-plain").choices[0].message.content
    with pytest.raises(openai.RateLimitError):
        _ask(gw, "tpm", "adm-tpm")
    assert fs["cls"].bodies() == [] and len(fs["gpu"].bodies()) == 1


def test_a_client_that_leaves_during_a_stream_check_releases_everything(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup
    # The stream's only segment is held for a classifier call that takes 3 s (within the
    # guard's 10 s): the client leaves as soon as the call is in flight.
    fs["cls"].delay_next(1, seconds=3.0)
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", gw.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {KEYS['reader'].key}",
                     "x-request-id": "adm-gone"},
            json={"model": "chat", "messages": MESSAGES, "max_tokens": MAX_TOKENS,
                  "stream": True}) as r:
        assert r.status_code == 200
        poll(lambda: fs["cls"].bodies(), what="the classifier call")
    _settled(gw, tmp_path, "reader", 1)
    [rec] = [r for r in records(tmp_path) if r.client_request_id == "adm-gone"]
    guard = [a for a in rec.attempts if a.outcome == "guard"]
    assert len(guard) == 1
    assert (guard[0].error or "").startswith("cancelled")
    assert rec.attempts[-1].outcome != "guard"  # the serving attempt is recorded, last
