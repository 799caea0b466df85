"""`kind: local`: the gateway starts, health-gates, restarts and stops a local-backend process."""

from __future__ import annotations

import os
import signal

import httpx
import openai
import pytest

from local_backend.tiny import make_tiny_model
from tests.fakes.base import wait_until
from tests.integration.conftest import simple_policy


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def test_managed_backend_serves_restarts_and_stops(gateway, tmp_path, tiny_dir) -> None:
    gw = gateway(simple_policy(tmp_path, {
        "local": {"kind": "local", "model": str(tiny_dir), "engine": "torch",
                  "embedding_model": "all-MiniLM-L6-v2",
                  "timeouts": {"connect": 2, "first_byte": 60, "total": 120}}}, {
        "chat": {"deployments": [{"provider": "local", "model": str(tiny_dir)}]},
        "embed": {"type": "embedding",
                  "deployments": [{"provider": "local", "model": "all-MiniLM-L6-v2"}]}},
        router={"health_check_interval_s": 0.5}))
    # Health-gated: not ready until the backend answers /health.
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 200, timeout=90)
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    r = client.chat.completions.create(model="chat", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.model == "chat" and r.usage is not None and r.usage.completion_tokens <= 5
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="chat", max_tokens=4, stream=True, messages=[{"role": "user", "content": "hi"}])
        if c.choices]
    assert parts
    e = client.embeddings.create(model="embed", input="hello")
    assert len(e.data[0].embedding) == 384

    backends = gw.app.state.backends
    pid = backends.pid("local")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # The supervisor notices, restarts it (backoff 1 s) and readiness comes back. `/ready`
    # answers 200 once any deployment can serve: the chat one's own health probe may pass a
    # moment after the embedding one's (both probe the same backend), so wait for it by name.
    assert wait_until(lambda: backends.restarts("local") == 1, timeout=10)
    chat_id = f"local/{tiny_dir}"

    def chat_ready() -> bool:
        r = httpx.get(gw.url + "/ready")
        return (r.status_code == 200 and r.json()["deployments"].get(chat_id) == "ok"
                and backends.pid("local") not in (None, pid))

    assert wait_until(chat_ready, timeout=90)
    r = client.chat.completions.create(model="chat", max_tokens=3,
                                       messages=[{"role": "user", "content": "again"}])
    assert r.choices[0].message.content is not None
    new_pid = backends.pid("local")
    gw.stop()
    assert wait_until(lambda: not _alive(new_pid), timeout=15)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
