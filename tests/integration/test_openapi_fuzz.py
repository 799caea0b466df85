"""schemathesis against the real gateway, from its own `/openapi.json`, then proof that the
run left nothing behind: every tenant can still be admitted.

Two tenants (acme: `concurrency: 2` and a budget; globex: no limits), the admin key, a chat
model on the OpenAI-compatible fake and one on the Anthropic fake (so both translations and
the /v1/messages codec run), an embedding model, the ledger and key store in SQLite, limits
in Redis. `schemathesis run` (a subprocess, as an operator would run it) generates valid and
invalid requests for every documented operation, including stateful sequences (issue a key,
revoke it) for a fixed time budget, and fails on:

- any 5xx. The fakes are healthy, so a 502/503 here is the gateway misreading a good
  backend (as `stream: true` on /v1/embeddings once did), not an upstream failure;
- a hang: each request has `REQUEST_TIMEOUT_S`;
- a status, content type, header or body the document does not declare, a 405 without
  `Allow`, an operation that ignores its auth, invalid data accepted, valid data refused with
  anything but the 4xx a semantic check may give (an unknown tenant, a too-long date span).

`FUZZ_SECONDS` bounds the run; `FUZZ_SEED=<n>` replays one (the seed is in the output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.openapi import build_document
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import ROOT, Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.tenancy_support import (
    ADMIN_KEY,
    REDIS_URL,
    PolicyKey,
    admin,
    policy_key,
    poll,
    redis_prefix,
)

__all__ = ["redis_prefix"]  # a fixture used here

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "25"))
REQUEST_TIMEOUT_S = 10
ACME = policy_key("acme-fuzz")
GLOBEX = policy_key("globex-fuzz")
MODELS = ("llama", "claude", "embed")
# The hook's draw: claude twice, as the Anthropic translation refuses more of what it is sent.
FUZZ_MODELS = ("llama", "claude", "claude", "embed")
PRICE = {"input": "1", "output": "2"}  # USD per million tokens: every request reserves some

pytestmark = pytest.mark.timeout(FUZZ_SECONDS + 120)


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    oa, ant = FakeOpenAI("oa"), FakeAnthropic()
    oa.start()
    ant.start()
    yield oa, ant
    oa.stop()
    ant.stop()


def policy(tmp: Path, prefix: str, oa: FakeOpenAI, ant: FakeAnthropic) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "state": {"redis_url": REDIS_URL, "key_prefix": prefix},
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": str(tmp / "spill.jsonl"),
                   "flush_interval_s": 0.05},
        # Fuzzed requests never make a healthy backend look broken: no cooldowns mid-run.
        "router": {"circuit_breaker": {"failures": 10_000, "cooldown_s": 1.0}, "seed": 1},
        "providers": {
            "oa": {"kind": "openai-compatible", "base_url": oa.url + "/v1"},
            "ant": {"kind": "anthropic", "base_url": ant.url + "/v1", "api_key": ant.api_key},
        },
        "models": {
            "llama": {"deployments": [{"provider": "oa", "model": "llama-3-8b",
                                       "pricing": [PRICE]}]},
            "claude": {"deployments": [{"provider": "ant", "model": "claude-sonnet-4-5",
                                        "pricing": [PRICE]}]},
            "embed": {"type": "embedding",
                      "deployments": [{"provider": "oa", "model": "e5", "pricing": [PRICE]}]},
        },
        "tenants": {
            "acme": {"keys": [ACME.entry()], "limits": {"concurrency": 2},
                     "budget": {"monthly_usd": "100"}},
            "globex": {"keys": [GLOBEX.entry()]},
        },
    }


def schemathesis_config(path: Path) -> Path:
    """The run's settings: credentials for each security scheme of the document, the policy's
    names for path and query parameters, and what counts as a failure."""
    tenants = '["acme", "globex"]'
    path.write_text(f"""
color = false

[generation]
# Strings a JSON text can carry: lone surrogates (which the gateway refuses with a 400, see
# tests/unit/api/test_parse_properties.py) would end almost every body at the parser.
codec = "utf-8"
database = "none"

[auth.openapi.ApiKey]
bearer = "{ACME.key}"
[auth.openapi.ApiKeyHeader]
api_key = "{GLOBEX.key}"
[auth.openapi.AdminKey]
bearer = "{ADMIN_KEY}"
[auth.openapi.AdminKeyHeader]
api_key = "{ADMIN_KEY}"

[dictionaries.models]
values = {json.dumps(list(MODELS))}
[dictionaries.tenants]
values = {tenants}

[parameters]
"path.model" = {{ dictionary = "models", probability = 0.7 }}
"path.tenant" = {{ dictionary = "tenants", probability = 0.7 }}
"query.tenant" = {{ dictionary = "tenants", probability = 0.7 }}
"body.tenant" = {{ dictionary = "tenants", probability = 0.7 }}

# A body the schema allows may still be refused for what no schema can say: an unknown tenant
# or model, a date span over ten years, a block type a backend cannot take, 1.0 where an
# integer goes (OpenAI refuses it too), a budget spent. Those are 4xx by design; anything
# else (a 5xx, a 405, a 413 ...) on valid data still fails.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "402", "403", "404", "429"]
""")
    return path


def run_schemathesis(url: str, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SCHEMATHESIS_HOOKS": "tests.integration.openapi_fuzz_hooks",
           "FUZZ_MODELS": ",".join(FUZZ_MODELS), "FUZZ_KEYS": f"{ACME.key},{GLOBEX.key}"}
    seed = ["--seed", os.environ["FUZZ_SEED"]] if os.environ.get("FUZZ_SEED") else []
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
           url + "/openapi.json", "--checks", "all", "--max-time", str(FUZZ_SECONDS),
           # One worker: the machine has two cores and the gateway needs one.
           "--workers", "1", "--request-timeout", str(REQUEST_TIMEOUT_S),
           # The paths without /v1 are the same handlers: their time goes to the /v1 ones.
           "--exclude-operation-id-regex", "Alias", "--output-truncate", "true", *seed]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=FUZZ_SECONDS + 90)


def _report(out: str) -> str:
    """The failures and summary of a run, without the progress lines before them."""
    for marker in ("= FAILURES =", "= ERRORS =", "= SUMMARY ="):
        i = out.find(marker)
        if i >= 0:
            return out[out.rfind("\n", 0, i) + 1:][-20_000:]
    return out[-20_000:]


def chat(gw: Gateway, key: PolicyKey) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", timeout=30.0,
                      headers={"Authorization": f"Bearer {key.key}"},
                      json={"model": "llama", "messages": [{"role": "user", "content": "hi"}]})


def reserved(gw: Gateway, tenant: str) -> list[Decimal]:
    r = admin("GET", gw.url, f"/admin/budgets/{tenant}")
    assert r.status_code == 200, r.text
    return [Decimal(b["reserved_usd"]) for b in r.json()["budget"]]


def released(gw: Gateway, tenant: str) -> bool:
    return all(r == 0 for r in reserved(gw, tenant))


def assert_concurrency_slots_all_free(gw: Gateway, oa: FakeOpenAI) -> None:
    """acme has two slots: two long requests both hold one, a third is refused meanwhile (the
    limit still works), and both end in a 200 — none was leaked, none counted twice."""
    oa.delay_next(2, seconds=3.0)
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(chat(gw, ACME)))
               for _ in range(2)]
    for t in threads:
        t.start()
    poll(lambda: oa.in_flight == 2, timeout=10, what="two acme requests at the backend")
    third = chat(gw, ACME)
    assert third.status_code == 429, third.text
    assert "2 concurrent requests" in third.json()["error"]["message"], third.text
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]


def test_fuzzed_api_answers_as_documented_and_leaks_nothing(
        redis_prefix: str, upstreams: tuple[FakeOpenAI, FakeAnthropic], tmp_path: Path) -> None:
    oa, ant = upstreams
    with Gateway(policy(tmp_path, redis_prefix, oa, ant), tmp=tmp_path) as gw:
        proc = run_schemathesis(gw.url, schemathesis_config(tmp_path / "schemathesis.toml"),
                                tmp_path)
        assert proc.returncode == 0, _report(proc.stdout + proc.stderr)
        # Not a vacuous pass: the generated traffic got through to both wire formats.
        assert len(oa.requests) >= 5 and len(ant.requests) >= 1, (
            len(oa.requests), len(ant.requests), _report(proc.stdout))

        # Every request settled: no budget is still held for one (settling is a task).
        poll(lambda: released(gw, "acme"), timeout=15, what="acme's budget holds released")
        assert_concurrency_slots_all_free(gw, oa)
        assert chat(gw, GLOBEX).status_code == 200
        assert reserved(gw, "acme") == [Decimal(0)]


# ---- the route itself, and what the first runs found -----------------------------------------

@pytest.fixture
def small(fakes: Any, gateway: Any, tmp_path: Path) -> Gateway:
    up = fakes("up")
    return gateway(simple_policy(  # type: ignore[no-any-return]
        tmp_path, {"up": provider(up)}, {"chat": {"deployments": [{"provider": "up",
                                                                   "model": "m"}]}},
        server={"admin_key": ADMIN_KEY},
        tenants={"acme": {"keys": [ACME.entry()]}}))


def test_document_is_served_without_a_key(small: Gateway) -> None:
    r = httpx.get(small.url + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == build_document()


def test_405_lists_every_method_the_path_takes(small: Gateway) -> None:
    # /admin/keys is two routes (GET, POST); Starlette's 405 named only the first one's.
    r = httpx.request("PUT", small.url + "/admin/keys")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    assert "Allowed: GET, HEAD, POST." in r.json()["error"]["message"]
    r = httpx.request("TRACE", small.base_url + "/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_embeddings_with_stream_true_is_a_400_not_a_502(small: Gateway) -> None:
    r = httpx.post(small.base_url + "/embeddings", json={"model": "chat", "input": "x",
                                                          "stream": True},
                   headers={"Authorization": f"Bearer {ACME.key}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream", r.text
