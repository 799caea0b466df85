"""Several replicas, one Redis, one PostgreSQL: two `gateway serve` processes hold a tenant to
its requests per minute, its concurrency and its budget together (the bound docs/tenants.md
documents), and a ledger database that goes away mid-run loses no record and fails no request.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.accounting.estimate import estimate_prompt_tokens
from gateway.limits.rules import to_nano
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway, GatewayProcess
from tests.integration.tenancy_support import (
    MSG,
    LedgerDB,
    StampedFake,
    admin,
    fake_provider,
    fresh_prefix,
    fresh_schema,
    message,
    pg_schema,
    policy_key,
    poll,
    redis_prefix,
    sdk,
    started,
    tenant_policy,
)
from tests.unit.accounting.factories import TcpProxy

__all__ = ["pg_schema", "redis_prefix"]  # fixtures used by this module

RPM = policy_key("rpm-1")
CONC = policy_key("conc-1")
BUDGET = policy_key("budget-1")

RPM_LIMIT = 10  # one request per 6 s once the bucket of 10 is spent
CONC_LIMIT = 3
# The budget tenant: USD per million tokens; the fake answers 11 prompt + 5 output tokens.
BUDGET_PRICE = {"input": "100", "output": "300"}
BUDGET_CONCURRENCY = 8
BUDGET_LIMIT = Decimal("0.02")


@dataclass
class Replicas:
    a: GatewayProcess
    b: GatewayProcess
    db: LedgerDB
    rpm_up: FakeOpenAI
    conc_up: FakeOpenAI
    budget_up: FakeOpenAI

    def clients(self, key: str) -> list[openai.OpenAI]:
        return [sdk(self.a.base_url, key), sdk(self.b.base_url, key)]


def _start_all(procs: list[GatewayProcess]) -> None:
    """Start replicas side by side (each takes a second or two to import and bind)."""
    errors: list[BaseException] = []

    def start(p: GatewayProcess) -> None:
        try:
            p.start()
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for p in procs:
            p.stop()
        raise errors[0]


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    schemas, prefixes = fresh_schema(), fresh_prefix()
    schema, prefix = next(schemas), next(prefixes)
    fakes = {n: started(FakeOpenAI(n)) for n in ("rpm_up", "conc_up", "budget_up")}
    tmp = Path(tempfile.mkdtemp(prefix="gw-replicas-"))

    def policy(spill: str) -> dict[str, Any]:
        def model(fake: str, **extra: Any) -> dict[str, Any]:
            return {"deployments": [{"provider": fake, "model": "m", **extra}]}

        return tenant_policy(
            tmp, schema, prefix, {n: fake_provider(f) for n, f in fakes.items()},
            {"r": model("rpm_up"), "c": model("conc_up"),
             "b": model("budget_up", pricing=[BUDGET_PRICE])},
            {"rpm": {"keys": [RPM.entry()], "limits": {"rpm": RPM_LIMIT}},
             "conc": {"keys": [CONC.entry()], "limits": {"concurrency": CONC_LIMIT}},
             "budget": {"keys": [BUDGET.entry()],
                        "limits": {"concurrency": BUDGET_CONCURRENCY},
                        "budget": {"monthly_usd": str(BUDGET_LIMIT)}}},
            spill=spill)  # each replica its own spill file

    a = GatewayProcess(policy("spill-a.jsonl"), tmp=tmp)
    b = GatewayProcess(policy("spill-b.jsonl"), tmp=tmp)
    _start_all([a, b])
    try:
        yield Replicas(a, b, LedgerDB(schema), **fakes)
    finally:
        a.stop()
        b.stop()
        for f in fakes.values():
            f.stop()
        for gen in (schemas, prefixes):
            with contextlib.suppress(StopIteration):
                next(gen)


def _status(call: Callable[[], Any]) -> tuple[int, Any]:
    try:
        call()
        return 200, None
    except openai.APIStatusError as e:
        return e.status_code, e


def _burst(clients: list[openai.OpenAI], n: int, model: str, **kw: Any
           ) -> list[tuple[int, Any]]:
    """`n` requests at once, alternating replicas."""
    def one(i: int) -> tuple[int, Any]:
        c = clients[i % len(clients)]
        return _status(lambda: c.chat.completions.create(model=model, messages=MSG, **kw))

    with ThreadPoolExecutor(max_workers=min(n, 16)) as pool:
        return list(pool.map(one, range(n)))


# ---- rate limits and concurrency across replicas ---------------------------------------------

def test_two_replicas_hold_a_tenant_to_its_rpm(replicas: Replicas) -> None:
    n = 3 * RPM_LIMIT
    start = time.monotonic()
    results = _burst(replicas.clients(RPM.key), n, "r")
    span = time.monotonic() - start
    counts = Counter(s for s, _ in results)
    assert set(counts) <= {200, 429}, counts
    # docs/tenants.md: over any span of t seconds a scope admits at most limit + ⌊limit·t/60⌋,
    # for all replicas together; a fresh bucket admits its full limit at once.
    assert RPM_LIMIT <= counts[200] <= RPM_LIMIT + math.floor(RPM_LIMIT * span / 60)
    assert len(replicas.rpm_up.requests) == counts[200]  # refusals never reached upstream
    refused = [e for s, e in results if s == 429]
    assert refused and all(e.code == "rate_limit_exceeded" for e in refused)
    h = refused[0].response.headers
    assert h["x-ratelimit-limit-requests"] == str(RPM_LIMIT)
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(h["retry-after"]) <= 60 // RPM_LIMIT


def test_two_replicas_hold_a_tenant_to_its_concurrency(replicas: Replicas) -> None:
    n = 12
    up = replicas.conc_up
    up.max_in_flight = 0
    up.delay_next(n, seconds=0.3)  # each admitted request holds its slot a while upstream
    results = _burst(replicas.clients(CONC.key), n, "c")
    counts = Counter(s for s, _ in results)
    assert set(counts) <= {200, 429}, counts
    assert counts[200] >= CONC_LIMIT
    # Counted at the upstream: never more in flight than the tenant's limit, both replicas
    # together (each replica alone would have let CONC_LIMIT through).
    assert 1 <= up.max_in_flight <= CONC_LIMIT
    refused = [e for s, e in results if s == 429]
    assert refused, "12 requests at once against 3 slots were all admitted"
    assert all(f"{CONC_LIMIT} concurrent requests" in message(e) for e in refused)
    assert all(e.response.headers["retry-after"] == "1" for e in refused)
    # Every slot comes back when its response settles.
    clients = replicas.clients(CONC.key)
    while up.take_fault() is not None:
        pass
    for c in clients:
        def admitted(c: openai.OpenAI = c) -> bool:
            return _status(lambda: c.chat.completions.create(model="c", messages=MSG))[0] == 200

        poll(admitted, timeout=5, what="a free slot")


# ---- budget race -----------------------------------------------------------------------------

def _cost(prompt: int, output: int) -> Decimal:
    """USD of `prompt` input and `output` output tokens at BUDGET_PRICE, rounded up to the
    nano-dollar as budgets count it."""
    exact = (prompt * Decimal(BUDGET_PRICE["input"]) + output * Decimal(BUDGET_PRICE["output"])
             ) / Decimal(1_000_000)
    return Decimal(to_nano(exact)) / Decimal(1_000_000_000)


def test_budget_race_across_replicas_stays_within_the_documented_overshoot(
        replicas: Replicas) -> None:
    body: dict[str, Any] = {"model": "b", "messages": MSG, "max_tokens": 1}
    # The reservation w: the admission estimate of the prompt plus max_tokens, at the only
    # deployment's prices; the actual cost a: what the fake reports (11 prompt, 5 output).
    w = _cost(estimate_prompt_tokens(body), 1)
    a = _cost(11, 5)
    assert a > w  # each request costs more than it reserved: the bound is not zero
    bound = BUDGET_LIMIT + BUDGET_CONCURRENCY * max(Decimal(0), a - w)

    # Nearly spend the budget first, one request at a time.
    first = replicas.clients(BUDGET.key)[0]
    spent_before = 0
    while BUDGET_LIMIT - (spent_before + 1) * a > 3 * w:
        first.chat.completions.create(**body)
        spent_before += 1
    replicas.budget_up.delay_next(50, seconds=0.1)  # admitted requests overlap upstream
    results = _burst(replicas.clients(BUDGET.key), 50, "b", max_tokens=1)
    counts = Counter(s for s, _ in results)
    assert set(counts) <= {200, 402, 429}, counts
    assert counts[402] >= 1, counts  # the budget ran out during the burst
    assert all(e.code == "budget_exceeded" for s, e in results if s == 402)

    total = spent_before + 50
    poll(lambda: replicas.db.count("budget") == total, timeout=20,
         what=f"{total} ledger records for tenant budget")
    spent = replicas.db.totals("budget")["cost_usd"]
    assert spent == (spent_before + counts[200]) * a
    assert spent <= bound, f"spent {spent} > bound {bound} (L + C × (a − w))"
    # Redis agrees with the ledger once every hold is settled.
    def budget() -> dict[str, Any]:
        [month] = admin("GET", replicas.a.url, "/admin/budgets/budget").json()["budget"]
        return month

    poll(lambda: Decimal(budget()["reserved_usd"]) == 0, timeout=5, what="holds released")
    assert Decimal(budget()["spent_usd"]) == spent


# ---- the ledger database goes away mid-run ---------------------------------------------------

def test_ledger_outage_mid_run_loses_no_record_and_fails_no_request(
        pg_schema: str, redis_prefix: str, tmp_path: Path) -> None:
    up = StampedFake("up")
    up.start()
    proxy = TcpProxy().up()
    key = policy_key("acme-1")
    gw = Gateway(tenant_policy(
        tmp_path, pg_schema, redis_prefix, {"up": fake_provider(up)},
        {"chat": {"deployments": [{"provider": "up", "model": "m",
                                   "pricing": [{"input": "1", "output": "2"}]}]}},
        {"acme": {"keys": [key.entry()]}}, ledger_url=proxy.url()), tmp=tmp_path).start()
    db = LedgerDB(pg_schema)  # straight to PostgreSQL, not through the proxy
    client = sdk(gw.base_url, key.key)
    n = 0
    try:
        def send(count: int) -> None:
            nonlocal n
            for _ in range(count):
                r = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
                assert r.http_response.status_code == 200
                n += 1

        send(5)
        poll(lambda: db.count() == 5, timeout=10, what="the first records")
        proxy.down()  # every ledger connection cut, new ones refused
        send(10)
        proxy.up()
        send(5)
        # Spilled records are replayed once the database answers again: exactly n, once each.
        poll(lambda: db.count() == n, timeout=30, what=f"{n} ledger records")
        t = db.totals()
        assert t["requests"] == n == 20
        assert t["cost_usd"] == n * Decimal("0.000021")
        assert not (tmp_path / "spill.jsonl.rejected").exists()
        # The outage was real: the writer failed to reach the database and spilled meanwhile.
        stats = gw.app.state.deps.settler.ledger_writer.stats
        assert stats.db_failures >= 1 and stats.spilled >= 1 and stats.replayed >= 1
    finally:
        gw.stop()
        proxy.down()
        up.stop()
