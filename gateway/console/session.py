"""Console sign-in: a key exchanged for a signed session cookie, checked again on every request.

The cookie holds no secret the browser could reuse against the API: the key's SHA-256 (what
the policy and key store hold), its kind (admin or tenant), the tenant, an expiry and a random
nonce, signed with HMAC-SHA256 under a secret derived from `server.admin_key`. Every replica
with the same policy verifies every other's cookies (no sticky sessions), and changing the
admin key ends every session at once.

On every request the session is checked the way the API checks a key (`Viewer.check`): a
tenant session's hash must still be a live key in the Authenticator's index (which drops a
revoked key within a second, on every replica), an admin session's hash must still be the
admin key's. So revoking a key ends its console sessions as it ends the key.

Sign-out ends the session on the server too: the cookie's nonce is its session id, and
`revocations.py` records it as signed out (in Redis when configured, shared by every replica)
so a copy of the cookie stops working at once.

CSRF: every state-changing request (POST) carries a token derived from the session's nonce
(`csrf_token`), in a form field or the `x-csrf-token` header; the cookie is also
`SameSite=Strict`. The sign-in form, which has no session yet, uses a double-submit token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.auth import admin_key_matches
from gateway.call import ANONYMOUS
from gateway.errors import AuthError, GatewayError, PermissionDenied
from gateway.keys import hash_key

COOKIE = "gw_console"
LOGIN_COOKIE = "gw_console_login"
Kind = Literal["admin", "tenant"]


class CsrfRefused(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "csrf_failed"


@dataclass(frozen=True, slots=True)
class Session:
    kind: Kind
    key_hash: str
    tenant: str | None  # None for the admin
    expires_at: float  # epoch seconds
    nonce: str  # random per sign-in: the session id sign-out revokes, and the CSRF seed


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, after the session was checked: the admin (everything) or one tenant."""

    session: Session
    key_id: str | None

    @property
    def admin(self) -> bool:
        return self.session.kind == "admin"

    @property
    def tenant(self) -> str | None:
        return self.session.tenant

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDenied("This page is for the gateway admin; a tenant key sees its "
                                   "own spend, tenant page and requests.", code="admin_only")

    def scope(self, tenant: str | None) -> str | None:
        """The tenant a read is limited to: the viewer's own for a tenant session (asking for
        another's is a 403, never a silent substitution), the one asked for by the admin."""
        if self.admin:
            return tenant
        if tenant not in (None, self.session.tenant):
            raise PermissionDenied("A tenant session sees only its own tenant's data.",
                                   code="other_tenant")
        return self.session.tenant


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and verifies session cookies and CSRF tokens under one admin key."""

    def __init__(self, admin_key: str, clock: Callable[[], float] = time.time,
                 epoch: str | None = None) -> None:
        # Derived, never the key itself: the cookie's MAC must not be usable as the key.
        self._secret = hashlib.sha256(b"gateway-console-session\x00" + admin_key.encode()).digest()
        self._clock = clock
        # Set when sign-outs are remembered only in this process: its cookies name it, so a
        # restart (which forgets them) ends every session rather than revive signed-out ones.
        self._epoch = epoch

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def issue(self, kind: Kind, key_hash: str, tenant: str | None, ttl_s: float) -> str:
        payload = {"k": kind, "h": key_hash, "t": tenant,
                   "e": int(self._clock() + ttl_s), "n": secrets.token_urlsafe(16)}
        if self._epoch is not None:
            payload["b"] = self._epoch
        body = json.dumps(payload, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, cookie: str | None) -> Session:
        """The session in a cookie; AuthError when absent, tampered with or expired."""
        if not cookie:
            raise AuthError("Sign in to the console first.", code="no_session")
        try:
            body_text, mac_text = cookie.split(".", 1)
            body = _unb64(body_text)
            # The MAC's canonical text, not its decoded bytes: base64's last character
            # carries unused bits, so another text can decode to the same MAC.
            good = hmac.compare_digest(mac_text, _b64(self._mac(body)))
            d: dict[str, Any] = json.loads(body) if good else {}
        except (ValueError, TypeError):
            good, d = False, {}
        if not good or d.get("k") not in ("admin", "tenant"):
            raise AuthError("The console session is not valid; sign in again.",
                            code="bad_session")
        if self._clock() >= float(d["e"]):
            raise AuthError("The console session expired; sign in again.",
                            code="session_expired")
        if self._epoch is not None and d.get("b") != self._epoch:
            raise AuthError("The gateway restarted since this sign-in; sign in again.",
                            code="bad_session")
        return Session(d["k"], str(d["h"]), d.get("t"), float(d["e"]), str(d["n"]))

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf\x00" + session.nonce.encode()))

    def check_csrf(self, session: Session, presented: str | None) -> None:
        if not presented or not hmac.compare_digest(presented, self.csrf_token(session)):
            raise CsrfRefused("Missing or wrong CSRF token: reload the page and try again.")


def check_login_csrf(cookie: str | None, presented: str | None) -> None:
    """The sign-in form's double-submit token: the form field must equal its cookie."""
    if not cookie or not presented or not hmac.compare_digest(cookie, presented):
        raise CsrfRefused("The sign-in form expired: reload the page and sign in again.")


def sign_in(key: str, admin_key: str, auth: Any) -> tuple[Kind, str, str | None]:
    """(kind, key hash, tenant) for a presented key: the admin key, or a live tenant key
    (AuthError otherwise, with the API's own message)."""
    if admin_key_matches(key, admin_key):
        return "admin", _admin_hash(admin_key), None
    principal = auth.authenticate(key)
    if principal is ANONYMOUS:
        raise AuthError("The gateway runs in open mode (no tenants): only the admin key "
                        "signs in to the console.")
    return "tenant", hash_key(key), principal.tenant


def _admin_hash(admin_key: str) -> str:
    return admin_key if admin_key.startswith("sha256:") else hash_key(admin_key)


def check(session: Session, admin_key: str, auth: Any) -> Viewer:
    """The session's viewer if its key still works now (same checks as the API's)."""
    if session.kind == "admin":
        if not hmac.compare_digest(session.key_hash, _admin_hash(admin_key)):
            raise AuthError("The admin key changed; sign in again.", code="bad_session")
        return Viewer(session, None)
    principal = auth.authenticate_hash(session.key_hash)
    if principal.tenant != session.tenant:
        raise AuthError("The console session is not valid; sign in again.", code="bad_session")
    return Viewer(session, principal.key_id)
