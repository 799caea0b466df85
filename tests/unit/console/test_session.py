"""Console sessions: signed cookies, expiry, CSRF tokens, and who sees which tenant."""

from __future__ import annotations

import pytest

from gateway.auth import Authenticator
from gateway.console.session import (
    CsrfRefused,
    SessionSigner,
    check,
    check_login_csrf,
    sign_in,
)
from gateway.errors import AuthError, PermissionDenied
from gateway.keys import generate_key, hash_key
from gateway.policy.tenants import KeyConfig, TenantConfig

ADMIN = "gw-admin-test-key-0123456789"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _auth(key: str) -> Authenticator:
    tenants = {"acme": TenantConfig(keys=[KeyConfig(id="acme-1", hash=hash_key(key))]),
               "globex": TenantConfig()}
    return Authenticator(tenants)


def test_a_cookie_verifies_until_it_expires() -> None:
    clock = Clock()
    s = SessionSigner(ADMIN, clock)
    cookie = s.issue("tenant", "sha256:ab", "acme", ttl_s=60)
    session = s.verify(cookie)
    assert (session.kind, session.tenant) == ("tenant", "acme")
    clock.t += 60
    with pytest.raises(AuthError) as e:
        s.verify(cookie)
    assert e.value.code == "session_expired"


@pytest.mark.parametrize("mangle", [
    lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),  # the MAC
    lambda c: "eyK" + c[3:],  # the payload
    lambda c: c.split(".")[0],  # no MAC
    lambda c: "",
    lambda c: "not base64 at all!.###",
])
def test_a_tampered_cookie_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    s = SessionSigner(ADMIN)
    with pytest.raises(AuthError):
        s.verify(mangle(s.issue("admin", hash_key(ADMIN), None, 60)))


def test_another_admin_keys_cookies_do_not_verify() -> None:
    cookie = SessionSigner("another-key").issue("admin", hash_key(ADMIN), None, 60)
    with pytest.raises(AuthError):
        SessionSigner(ADMIN).verify(cookie)


def test_csrf_token_is_per_session() -> None:
    s = SessionSigner(ADMIN)
    one = s.verify(s.issue("admin", hash_key(ADMIN), None, 60))
    two = s.verify(s.issue("admin", hash_key(ADMIN), None, 60))
    s.check_csrf(one, s.csrf_token(one))
    for bad in (None, "", s.csrf_token(two), s.csrf_token(one) + "x"):
        with pytest.raises(CsrfRefused):
            s.check_csrf(one, bad)
    check_login_csrf("abc", "abc")
    for cookie, field in (("abc", "abd"), (None, "abc"), ("abc", None)):
        with pytest.raises(CsrfRefused):
            check_login_csrf(cookie, field)


def test_sign_in_knows_admin_and_tenant_keys_only() -> None:
    key = generate_key()
    auth = _auth(key)
    assert sign_in(ADMIN, ADMIN, auth) == ("admin", hash_key(ADMIN), None)
    assert sign_in(key, ADMIN, auth) == ("tenant", hash_key(key), "acme")
    with pytest.raises(AuthError):
        sign_in("gw-unknown-key-0000000000", ADMIN, auth)
    # Open mode (no tenants): any key would be "default"; only the admin key signs in.
    with pytest.raises(AuthError):
        sign_in("anything", ADMIN, Authenticator({}))


def test_a_session_ends_with_its_key() -> None:
    key = generate_key()
    auth = _auth(key)
    s = SessionSigner(ADMIN)
    session = s.verify(s.issue("tenant", hash_key(key), "acme", 60))
    viewer = check(session, ADMIN, auth)
    assert (viewer.admin, viewer.tenant, viewer.key_id) == (False, "acme", "acme-1")
    auth.update_tenants({"acme": TenantConfig(), "globex": TenantConfig()})  # key removed
    with pytest.raises(AuthError):
        check(session, ADMIN, auth)
    # An admin session ends when the admin key changes.
    admin = s.verify(s.issue("admin", hash_key(ADMIN), None, 60))
    assert check(admin, ADMIN, auth).admin
    with pytest.raises(AuthError):
        check(admin, "a-new-admin-key", auth)


def test_a_tenant_viewer_is_scoped_to_its_tenant() -> None:
    key = generate_key()
    auth = _auth(key)
    s = SessionSigner(ADMIN)
    tenant = check(s.verify(s.issue("tenant", hash_key(key), "acme", 60)), ADMIN, auth)
    assert tenant.scope(None) == "acme" and tenant.scope("acme") == "acme"
    with pytest.raises(PermissionDenied):
        tenant.scope("globex")
    with pytest.raises(PermissionDenied):
        tenant.require_admin()
    admin = check(s.verify(s.issue("admin", hash_key(ADMIN), None, 60)), ADMIN, auth)
    assert admin.scope(None) is None and admin.scope("globex") == "globex"
    admin.require_admin()


def test_a_mac_text_that_decodes_to_the_same_bytes_is_refused() -> None:
    # A 32-byte MAC is 43 base64 characters; the last one carries 2 unused bits, so flipping
    # its lowest bit gives another text for the same bytes. Only the canonical text verifies.
    s = SessionSigner(ADMIN)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for _ in range(20):
        body, mac = s.issue("admin", hash_key(ADMIN), None, 60).split(".", 1)
        twin = mac[:-1] + alphabet[alphabet.index(mac[-1]) ^ 1]
        with pytest.raises(AuthError):
            s.verify(f"{body}.{twin}")
