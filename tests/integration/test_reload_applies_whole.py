"""A reload applies fully or not at all (issue 8, item 9): going from open mode to a policy
with tenants opens the key store, so keys issued with `gateway keys create` work at once; a
change only a restart can make refuses the whole reload, and says so."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import yaml

from tests.fakes.base import wait_until
from tests.integration.conftest import provider, simple_policy
from tests.integration.tenancy_support import run_cli

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _status(gw: Any, key: str | None = None) -> int:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.base_url + "/chat/completions", json=BODY, headers=headers,
                      timeout=10).status_code


def test_open_mode_to_tenants_loads_issued_keys(fakes: Any, gateway: Any, tmp_path: Any) -> None:
    up = fakes("up")
    open_policy = simple_policy(tmp_path, {"up": provider(up)},
                                {"chat": {"deployments": [{"provider": "up", "model": "m"}]}})
    gw = gateway(open_policy)
    assert _status(gw) == 200  # open mode: no key needed
    with_tenants = {**open_policy, "tenants": {"acme": {}}}
    staged = tmp_path / "next.yaml"
    staged.write_text(yaml.safe_dump(with_tenants))
    key = run_cli("keys", "create", "--tenant", "acme", config=staged).stdout.strip()
    gw.policy_path.write_text(staged.read_text())
    assert wait_until(lambda: _status(gw) == 401, timeout=10)  # tenants now required...
    assert _status(gw, key) == 200  # ...and the issued key works, without a restart


def test_a_restart_only_change_refuses_the_whole_reload(fakes: Any, gateway: Any, tmp_path: Any,
                                                        caplog: Any) -> None:
    up = fakes("up")
    policy = simple_policy(tmp_path, {"up": provider(up)},
                           {"chat": {"deployments": [{"provider": "up", "model": "m"}]}})
    gw = gateway(policy)
    caplog.set_level(logging.ERROR, logger="gateway.policy")
    changed = {**policy, "ledger": {**policy["ledger"], "url": f"sqlite:///{tmp_path}/other.db"},
               "models": {"chat": policy["models"]["chat"],
                          "new": {"deployments": [{"provider": "up", "model": "m2"}]}}}
    gw.policy_path.write_text(yaml.safe_dump(changed))
    assert wait_until(lambda: any("reload refused" in r.getMessage() for r in caplog.records),
                      timeout=10)
    msg = next(r.getMessage() for r in caplog.records if "reload refused" in r.getMessage())
    assert "ledger.url" in msg and "restart" in msg
    # Nothing of it applied: the new model is not served.
    r = httpx.post(gw.base_url + "/chat/completions", json={**BODY, "model": "new"})
    assert r.status_code == 404
