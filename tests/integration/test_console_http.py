"""The console over plain HTTP against the real gateway: who may see what, CSRF, session expiry
and revocation, and that no key or secret reaches any page or response."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.console.session import COOKIE, LOGIN_COOKIE, SessionSigner
from gateway.keys import hash_key
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.console_support import (
    ACME_KEY,
    ADMIN_KEY,
    GLOBEX_KEY,
    Setup,
    console_policy,
    console_setup,
    csrf_of,
    ledger_sums,
    sign_in,
    traffic,
)

__all__ = ["console_setup"]  # the fixture this module uses

PAGES = ["/ui/spend", "/ui/tenants/acme", "/ui/requests", "/ui/keys", "/ui/deployments",
         "/ui/policy", "/ui/limits", "/ui/alerts"]
DATA = ["/ui/data/spend", "/ui/data/requests", "/ui/data/deployments", "/ui/spend.csv"]
ADMIN_ONLY = ["/ui/keys", "/ui/deployments", "/ui/policy", "/ui/alerts",
              "/ui/data/deployments"]


@pytest.fixture
def setup(console_setup: Setup) -> Setup:
    traffic(console_setup)
    return console_setup


def test_without_a_session_pages_go_to_sign_in_and_data_is_401(setup: Setup) -> None:
    c = httpx.Client(base_url=setup.url, follow_redirects=False)
    for path in PAGES:
        r = c.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/ui/login?next="), path
    for path in DATA:
        r = c.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "no_session"
    # State-changing requests without a session are refused too.
    assert c.post("/ui/keys", data={"tenant": "acme"}).status_code == 401
    assert c.post("/ui/keys/k1/revoke").status_code == 401


def test_a_wrong_key_does_not_sign_in(setup: Setup) -> None:
    c = httpx.Client(base_url=setup.url, follow_redirects=False)
    token = csrf_of(c.get("/ui/login").text)
    r = c.post("/ui/login", data={"key": "gw-not-a-key-at-all-123", "csrf": token})
    assert r.status_code == 401
    assert COOKIE not in r.cookies


def test_sign_in_needs_the_forms_own_token(setup: Setup) -> None:
    c = httpx.Client(base_url=setup.url, follow_redirects=False)
    c.get("/ui/login")
    r = c.post("/ui/login", data={"key": ADMIN_KEY, "csrf": "forged"})
    assert r.status_code == 403
    assert COOKIE not in r.cookies


def test_session_cookie_is_httponly_strict_and_expiring(setup: Setup) -> None:
    c = httpx.Client(base_url=setup.url, follow_redirects=False)
    token = csrf_of(c.get("/ui/login").text)
    r = c.post("/ui/login", data={"key": ADMIN_KEY, "csrf": token})
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith(COOKIE + "="))
    attrs = cookie.lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "max-age=" in attrs
    assert "secure" not in attrs  # plain HTTP here
    # Behind a TLS-terminating proxy the cookie is Secure.
    c2 = httpx.Client(base_url=setup.url, follow_redirects=False,
                      headers={"x-forwarded-proto": "https"})
    form = c2.get("/ui/login")
    login_cookie = next(v for k, v in form.headers.multi_items() if k == "set-cookie")
    assert "secure" in login_cookie.lower()
    # httpx keeps a Secure cookie off plain HTTP, as a browser would: send it as the proxy
    # in front would have passed it on.
    token = csrf_of(form.text)
    r = c2.post("/ui/login", data={"key": ADMIN_KEY, "csrf": token},
                headers={"cookie": f"{LOGIN_COOKIE}={token}"})
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith(COOKIE + "="))
    assert "secure" in cookie.lower()


def test_a_tenant_session_sees_only_its_own_tenant(setup: Setup) -> None:
    c = sign_in(setup.url, ACME_KEY)
    assert c.get("/ui/tenants/acme").status_code == 200
    assert c.get("/ui/tenants/globex").status_code == 403
    assert c.get("/ui/spend?tenant=globex").status_code == 403
    assert c.get("/ui/data/spend?tenant=globex").status_code == 403
    assert c.get("/ui/data/requests?tenant=globex").status_code == 403
    assert c.get("/ui/spend.csv?tenant=globex").status_code == 403
    for path in ADMIN_ONLY:
        assert c.get(path).status_code == 403, path
    # Unfiltered reads are the tenant's own, to the ledger's numbers.
    doc = c.get("/ui/data/spend").json()
    assert doc["tenant"] == "acme"
    mine = ledger_sums(setup.ledger, "acme")
    assert doc["totals"]["requests"] == mine["requests"] == 5
    listed = c.get("/ui/data/requests").json()["data"]
    assert {r["tenant"] for r in listed} == {"acme"} and len(listed) == 5
    assert all("error" not in a for r in listed for a in r["attempts"])  # operator-only
    csv_text = c.get("/ui/spend.csv").text
    assert "globex" not in csv_text and "acme" in csv_text
    limits = c.get("/ui/limits").text
    assert 'data-tenant="acme"' in limits and 'data-tenant="globex"' not in limits


def test_the_admin_session_sees_every_tenant(setup: Setup) -> None:
    c = sign_in(setup.url, ADMIN_KEY)
    for path in PAGES + DATA:
        assert c.get(path).status_code == 200, path
    doc = c.get("/ui/data/spend").json()
    assert doc["totals"]["requests"] == ledger_sums(setup.ledger)["requests"] == 7
    assert c.get("/ui/tenants/nobody").status_code == 404


def test_the_requests_explorer_pages_back_with_the_same_filters(setup: Setup) -> None:
    c = sign_in(setup.url, ADMIN_KEY)
    seen: list[str] = []
    doc = c.get("/ui/data/requests?limit=3&tenant=acme").json()
    while True:
        seen += [r["request_id"] for r in doc["data"]]
        if doc["next_cursor"] is None:
            break
        doc = c.get("/ui/data/requests", params={"limit": 3, "tenant": "acme",
                                                 "before": doc["next_cursor"]}).json()
    assert len(seen) == len(set(seen)) == 5
    # The page links to the older rows, keeping its filters.
    page = c.get("/ui/requests?limit=3&tenant=acme").text
    found = re.search(r'href="([^"]+)" data-testid="older"', page)
    assert found is not None
    link = html.unescape(found.group(1))
    assert "tenant=acme" in link and "before=" in link and c.get(link).status_code == 200
    r = c.get("/ui/data/requests?before=nonsense")
    assert r.status_code == 400 and r.json()["error"]["param"] == "before"


def test_state_changes_need_the_csrf_token(setup: Setup) -> None:
    c = sign_in(setup.url, ADMIN_KEY)
    token = csrf_of(c.get("/ui/keys").text)
    assert c.post("/ui/keys", data={"tenant": "acme"}).status_code == 403
    assert c.post("/ui/keys", data={"tenant": "acme", "csrf": "x" + token}).status_code == 403
    assert c.post("/ui/logout").status_code == 403
    # Another session's token is not this one's.
    other = sign_in(setup.url, ADMIN_KEY)
    other_token = csrf_of(other.get("/ui/keys").text)
    assert other_token != token
    assert c.post("/ui/keys", data={"tenant": "acme", "csrf": other_token}).status_code == 403
    r = c.post("/ui/keys", data={"tenant": "acme", "name": "made-here", "csrf": token})
    assert r.status_code == 200 and "made-here" in r.text
    # The header works as well as the form field.
    r = c.post("/ui/keys", data={"tenant": "acme"}, headers={"x-csrf-token": token})
    assert r.status_code == 200


def test_sign_out_ends_the_browser_session(setup: Setup) -> None:
    c = sign_in(setup.url, ADMIN_KEY)
    token = csrf_of(c.get("/ui/spend").text)
    r = c.post("/ui/logout", data={"csrf": token})
    assert r.status_code == 303
    assert c.get("/ui/data/spend").status_code == 401


def test_an_expired_or_tampered_session_is_refused(setup: Setup) -> None:
    signer = SessionSigner(ADMIN_KEY, clock=lambda: time.time() - 7200)
    expired = signer.issue("admin", hash_key(ADMIN_KEY), None, ttl_s=3600)
    c = httpx.Client(base_url=setup.url, follow_redirects=False, cookies={COOKIE: expired})
    r = c.get("/ui/data/spend")
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
    assert c.get("/ui/spend").status_code == 303
    # A cookie signed under another admin key, or edited, does not verify.
    forged = SessionSigner("another-admin-key").issue("admin", hash_key(ADMIN_KEY), None, 3600)
    for value in (forged, expired[:-2] + "xx"):
        c = httpx.Client(base_url=setup.url, cookies={COOKIE: value})
        r = c.get("/ui/data/spend")
        assert r.status_code == 401 and r.json()["error"]["code"] == "bad_session"


def test_a_revoked_keys_session_ends_within_a_second(setup: Setup) -> None:
    admin = sign_in(setup.url, ADMIN_KEY)
    token = csrf_of(admin.get("/ui/keys").text)
    page = admin.post("/ui/keys", data={"tenant": "globex", "name": "temp", "csrf": token})
    key = page.text.split('data-testid="issued-key">')[1].split("<")[0]
    key_id = json.loads(httpx.get(setup.url + "/admin/keys", headers={
        "authorization": f"Bearer {ADMIN_KEY}"}).text)["data"][-1]["id"]
    tenant = sign_in(setup.url, key)
    assert tenant.get("/ui/data/spend").status_code == 200
    r = admin.post(f"/ui/keys/{key_id}/revoke", data={"csrf": token})
    assert r.status_code == 303
    deadline = time.monotonic() + 1.0
    while tenant.get("/ui/data/spend").status_code != 401:
        assert time.monotonic() < deadline, "the session outlived its key by over a second"
        time.sleep(0.05)
    assert tenant.get("/ui/tenants/globex").status_code == 303  # back to sign-in


def test_no_key_or_secret_in_any_page_or_response(setup: Setup) -> None:
    secrets = [ADMIN_KEY, ACME_KEY, GLOBEX_KEY, "sk-upstream-secret-123456",
               hash_key(ACME_KEY), hash_key(ADMIN_KEY)]
    for key in (ADMIN_KEY, ACME_KEY):
        c = sign_in(setup.url, key)
        for path in PAGES + DATA:
            r = c.get(path)
            for s in secrets:
                assert s not in r.text, (path, s[:8])
                assert s.split(":")[-1] not in r.text, (path, s[:8])
    for path in ("/admin/policy", "/admin/deployments", "/admin/limits"):
        r = httpx.get(setup.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200
        for s in secrets:
            assert s.split(":")[-1] not in r.text, (path, s[:8])


def test_admin_status_endpoints_need_the_admin_key(setup: Setup) -> None:
    for path in ("/admin/policy", "/admin/deployments", "/admin/limits"):
        assert httpx.get(setup.url + path).status_code == 401
        r = httpx.get(setup.url + path, headers={"authorization": f"Bearer {ACME_KEY}"})
        assert r.status_code == 401
    r = httpx.get(setup.url + "/admin/limits?tenant=nobody",
                  headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "tenant"


def test_the_console_is_off_without_admin_key_or_when_disabled(tmp_path: Path) -> None:
    up, gpu = FakeOpenAI("up").start(), FakeOpenAI("gpu", vllm=True).start()
    try:
        policies: list[dict[str, Any]] = [console_policy(tmp_path, up, gpu, enabled=False)]
        no_admin = console_policy(tmp_path, up, gpu)
        del no_admin["server"]["admin_key"]
        policies.append(no_admin)
        for policy in policies:
            with Gateway(policy, tmp=tmp_path) as gw:
                for path in ("/ui/login", "/ui/spend", "/ui/data/spend"):
                    assert httpx.get(gw.url + path).status_code == 404, path
                assert httpx.post(gw.url + "/ui/login", data={"key": "x"}).status_code == 404
    finally:
        up.stop()
        gpu.stop()


def test_policy_page_shows_reload_results_and_the_diff(setup: Setup) -> None:
    import yaml

    def doc() -> dict[str, Any]:
        return httpx.get(setup.url + "/admin/policy",
                         headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()

    def wait(result: str) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while True:
            d = doc()
            if d["last_reload"] and d["last_reload"]["result"] == result:
                return d
            assert time.monotonic() < deadline, d["last_reload"]
            time.sleep(0.1)

    path = setup.gw.policy_path
    good = yaml.safe_load(path.read_text())
    assert doc()["last_reload"] is None and doc()["diff"] == ""
    bad = {**good, "models": {"chat": {"deployments": [{"provider": "up", "model": "m",
                                                         "weight": -5}]}}}
    path.write_text(yaml.safe_dump(bad))
    d = wait("rejected")
    assert any("weight" in m for m in d["last_reload"]["messages"])
    assert d["diff"] == ""  # the policy in force did not change
    good["models"]["chat"]["deployments"][0]["weight"] = 3
    path.write_text(yaml.safe_dump(good))
    d = wait("ok")
    assert "+      weight: 3.0" in d["diff"] and "-      weight: 1.0" in d["diff"]
    page = sign_in(setup.url, ADMIN_KEY).get("/ui/policy").text
    assert "weight: 3.0" in page and 'data-testid="diff"' in page
    assert "sk-upstream-secret" not in page
