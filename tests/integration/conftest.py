from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeOpenAI]]:
    started: list[FakeOpenAI] = []

    def make(name: str = "openai", **kw: Any) -> FakeOpenAI:
        f = FakeOpenAI(name, **kw).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


@pytest.fixture
def gateway(tmp_path: Any) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(policy: Any, env: dict[str, str] | None = None) -> Gateway:
        g = Gateway(policy, env=env, tmp=tmp_path).start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def provider(fake: FakeOpenAI, kind: str = "openai-compatible", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "base_url": fake.url + "/v1", **extra}


def simple_policy(tmp: Any, providers: dict[str, Any], models: dict[str, Any],
                  **sections: Any) -> dict[str, Any]:
    return {
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": f"{tmp}/spill.jsonl",
                   "flush_interval_s": 0.05},
        "router": {"circuit_breaker": {"failures": 2, "cooldown_s": 1.0}, "seed": 1,
                   **sections.pop("router", {})},
        "providers": providers,
        "models": models,
        **sections,
    }
