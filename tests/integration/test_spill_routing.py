"""Cost-aware spill through a real gateway: a fake vLLM reporting a long queue on `/metrics`
spills requests to the fake OpenAI endpoints, the cheapest the tenant may use first; a quiet
pool spills nothing; every spill is in the ledger with its reason (`GET /admin/requests`),
which the tenant's own listing does not show."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.routing.signals import parse_prometheus
from tests.integration.console_support import sign_in
from tests.integration.tenancy_support import (
    ADMIN_KEY,
    admin,
    fake_provider,
    fresh_prefix,
    policy_key,
    poll,
    tenant_policy,
)

ACME = policy_key("acme-1")  # may use every model
SOLO = policy_key("solo-1")  # may use `llama` only


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from fresh_prefix()


@pytest.fixture
def gw(prefix: str, fakes: Any, gateway: Any, tmp_path: Any) -> Any:
    gpu, big, mini = fakes("gpu", vllm=True), fakes("big"), fakes("mini")
    p = tenant_policy(
        tmp_path, "public", prefix,
        {"gpu": fake_provider(gpu, kind="vllm"), "big": fake_provider(big),
         "mini": fake_provider(mini)},
        {"llama": {"deployments": [
            {"provider": "gpu", "model": "m", "name": "gpu-a", "gpu_cost_per_hour": "2"},
            {"provider": "big", "model": "m", "name": "big-1",
             "pricing": [{"input": "2.5", "output": "10"}]}],
            "spill": {"ttft_ms": 1000, "to": ["mini"]}},
         "mini": {"deployments": [{"provider": "mini", "model": "m", "name": "mini-1",
                                   "pricing": [{"input": "0.15", "output": "0.6"}]}]}},
        {"acme": {"keys": [ACME.entry()]},
         "solo": {"keys": [SOLO.entry()], "models": ["llama"]}},
        ledger_url=f"sqlite:///{tmp_path}/ledger.db",
        router={"health_check_interval_s": 0.1, "metrics_stale_s": 5})
    del p["ledger"]["schema"]
    g = gateway(p)
    g.gpu, g.mini = gpu, mini
    return g


def days() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}


class Client:
    """Sends `llama` requests as a tenant's key; remembers where each one was served."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.sent: list[tuple[str, str]] = []  # (tenant, deployment)

    def served(self, tenant: str, key: Any) -> str:
        r = httpx.post(self.gw.base_url + "/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {key.key}"},
                       json={"model": "llama", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200, r.text
        self.sent.append((tenant, r.headers["x-gateway-deployment"]))
        return self.sent[-1][1]


def recorded(gw: Any, n: int) -> list[tuple[str, str, str | None]]:
    """(tenant, deployment, route_reason) of the `n` requests in the ledger, oldest first."""
    def get() -> list[Any] | None:
        r = admin("GET", gw.url, "/admin/requests", params=days())
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        return data if len(data) == n else None

    rows = poll(get, timeout=10, what=f"{n} requests in the ledger")
    return [(d["tenant"], d["deployment"], d["route_reason"]) for d in reversed(rows)]


def test_a_long_queue_spills_within_the_tenants_models_and_is_recorded(gw: Any) -> None:
    c = Client(gw)
    # A quiet pool: self-hosted, nothing recorded.
    assert c.served("acme", ACME) == "gpu-a"
    assert c.served("solo", SOLO) == "gpu-a"
    # The backend reports 50 waiting behind 8 running, each scheduled after 4 s in its queue.
    # (The fake answers in milliseconds, so the queue's length alone, 50 x latency / 8, would
    # predict little: vLLM's measured queue time is what says it is slow.)
    gw.gpu.waiting, gw.gpu.running, gw.gpu.queue_time_step = 50, 8, 4.0
    poll(lambda: c.served("acme", ACME) != "gpu-a", timeout=10,
         what="a spill once the queue is scraped")
    assert c.sent[-1][1] == "mini-1"  # the cheapest external the tenant may use
    assert c.served("solo", SOLO) == "big-1"  # `mini` is not solo's: its own external
    # The pool drains: self-hosted again once a scrape shows it.
    gw.gpu.waiting, gw.gpu.running, gw.gpu.queue_time_step = 0, 0, None
    poll(lambda: c.served("acme", ACME) == "gpu-a", timeout=10, what="back to self-hosted")

    rows = recorded(gw, len(c.sent))
    assert [(t, d) for t, d, _ in rows] == c.sent  # each request recorded once, in order
    for tenant, deployment, reason in rows:
        if deployment == "gpu-a":
            assert reason is None, (tenant, reason)
        else:
            assert reason is not None
            assert reason.startswith("spill: predicted TTFT 4000 ms on gpu-a > 1000 ms; "
                                     f"{deployment} $"), reason
            assert "vs self-hosted $" in reason
    # A tenant's own listing leaves the reason (GPU cost per token) out.
    r = httpx.get(gw.url + "/v1/usage/requests", params=days(), timeout=30,
                  headers={"Authorization": f"Bearer {SOLO.key}"})
    assert r.status_code == 200, r.text
    mine = r.json()["data"]
    assert len(mine) == 2 and all("route_reason" not in d for d in mine)
    # Counted on /metrics by decision.
    spills = sum(1 for r in rows if r[2] is not None)

    def counted() -> dict[str, float]:
        text = httpx.get(gw.url + "/metrics", timeout=10).text
        return {s.labels["decision"]: s.value
                for s in parse_prometheus(text, ["gateway_route_spills_total"])}

    poll(lambda: counted() == {"spill": spills}, what=f"{spills} spills counted")
    # The console's requests explorer shows it to the admin.
    console = sign_in(gw.url, ADMIN_KEY)
    try:
        page = console.get("/ui/requests", params=days())
    finally:
        console.close()
    assert page.status_code == 200
    assert page.text.count('data-testid="route-reason"') == spills
    assert "spill: predicted TTFT 4000 ms on gpu-a" in page.text


def test_a_spill_whose_external_side_fails_is_still_answered_and_recorded_once(gw: Any
                                                                              ) -> None:
    # The spill target answers 500: the request goes on to another deployment of its plan
    # (fallback as usual), the client gets its answer, and the ledger has one record for it.
    c = Client(gw)
    gw.gpu.waiting, gw.gpu.running, gw.gpu.queue_time_step = 50, 8, 4.0
    poll(lambda: c.served("acme", ACME) == "mini-1", timeout=10,
         what="a spill once the queue is scraped")
    gw.mini.fail_next(status=500)
    served = c.served("acme", ACME)
    assert served in ("big-1", "gpu-a"), served
    rows = recorded(gw, len(c.sent))
    assert [(t, d) for t, d, _ in rows] == c.sent
    assert rows[-1][2] is not None and rows[-1][2].startswith("spill: ")
