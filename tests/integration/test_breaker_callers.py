"""One tenant sending input that makes a backend answer 500 cannot take the deployment away
from every tenant; failures from several tenants still open the breaker (issue 8, item 4)."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.keys import generate_key, hash_key
from tests.integration.conftest import provider, simple_policy

MALLORY, ALICE, BOB = generate_key(), generate_key(), generate_key()


def _post(gw: Any, key: str, text: str) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", timeout=10,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "chat", "messages": [{"role": "user", "content": text}]})


def _gateway(fakes: Any, gateway: Any, tmp_path: Any) -> tuple[Any, Any, Any]:
    primary, spare = fakes("primary"), fakes("spare")
    gw = gateway(simple_policy(
        tmp_path, {"primary": provider(primary), "spare": provider(spare)},
        {"chat": {"deployments": [{"provider": "primary", "model": "m", "weight": 1000},
                                  {"provider": "spare", "model": "m", "weight": 0.001}]}},
        router={"circuit_breaker": {"failures": 3, "cooldown_s": 30}, "max_attempts": 1},
        tenants={name: {"keys": [{"id": name, "hash": hash_key(key)}]}
                 for name, key in (("mallory", MALLORY), ("alice", ALICE), ("bob", BOB))}))
    return gw, primary, spare


def test_one_tenants_poison_requests_leave_the_deployment_in_service(
        fakes: Any, gateway: Any, tmp_path: Any) -> None:
    gw, primary, _spare = _gateway(fakes, gateway, tmp_path)
    primary.poison = "POISON"
    for _ in range(10):
        assert _post(gw, MALLORY, "POISON").status_code == 502
    ok = _post(gw, ALICE, "hello")
    assert ok.status_code == 200 and ok.headers["x-gateway-deployment"] == "primary/m"
    ready = httpx.get(gw.url + "/ready").json()
    assert ready["deployments"]["primary/m"] == "ok"


def test_failures_from_several_tenants_open_it(fakes: Any, gateway: Any, tmp_path: Any) -> None:
    gw, primary, _spare = _gateway(fakes, gateway, tmp_path)
    primary.fail_next(3, status=500)
    for key in (MALLORY, ALICE, BOB):
        assert _post(gw, key, "hello").status_code == 502
    ready = httpx.get(gw.url + "/ready").json()
    assert ready["deployments"]["primary/m"] == "cooldown"
    served = _post(gw, ALICE, "hello")
    assert served.status_code == 200 and served.headers["x-gateway-deployment"] == "spare/m"
