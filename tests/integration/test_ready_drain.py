"""`/ready` during shutdown: 503 while the proxy drains, so the replica leaves the Service."""

from __future__ import annotations

import httpx

from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy


def test_ready_answers_503_while_the_proxy_drains(fakes, gateway, tmp_path) -> None:
    gw = gateway(simple_policy(tmp_path, {"up": provider(fakes("up"))},
                               {"chat": {"deployments": [{"provider": "up", "model": "m"}]}}))
    assert httpx.get(gw.url + "/ready").status_code == 200
    # What gateway.server does when SIGTERM arrives (tests/unit/test_server.py checks that
    # call), on the gateway's own loop; the grace period outlasts the test.
    assert gw.loop is not None
    gw.loop.call_soon_threadsafe(gw.app.state.proxy.begin_drain, 60.0)
    assert wait_until(lambda: httpx.get(gw.url + "/ready").status_code == 503, timeout=5)
    assert httpx.get(gw.url + "/ready").json() == {"status": "draining"}
