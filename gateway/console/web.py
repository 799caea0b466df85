"""The console's HTTP plumbing: templates, the session check every handler runs first, CSRF on
every POST, security headers, and how errors look (a page for a browser, the API's error JSON
for a data endpoint).

A handler is `async (request, viewer) -> Response`; `ConsoleWeb.page` and `.data` wrap it
with the checks, so no handler can forget one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.accounting.ledger import LedgerUnavailable
from gateway.console.revocations import Revocations, open_revocations
from gateway.console.session import (
    COOKIE,
    LOGIN_COOKIE,
    SessionSigner,
    Viewer,
    check,
)
from gateway.errors import AuthError, GatewayError, NotFound, ServiceUnavailable
from gateway.policy.models import Policy

log = logging.getLogger("gateway.console")
T = TypeVar("T")
Handler = Callable[[Request, Viewer], Awaitable[Response]]

_HERE = Path(__file__).resolve().parent
# The console's pages load scripts and styles only from the gateway itself; plotly.js draws
# into SVG with inline styles, hence 'unsafe-inline' for styles only.
_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
}
MAX_FORM_BYTES = 64 * 1024


def secure(request: Request) -> bool:
    """Behind TLS: the connection itself, or a proxy's `x-forwarded-proto: https`."""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or proto == "https"


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the console posts nothing else), first value per field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise GatewayError("The form is too large.", status=413,
                               type="invalid_request_error", code="too_large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


class ConsoleWeb:
    def __init__(self, policy: Callable[[], Policy], auth: Any, settler: Any,
                 gpu_lifetimes: Any = None) -> None:
        self._policy = policy
        self._gpu = gpu_lifetimes
        self._auth = auth
        self._settler = settler
        self.templates = Environment(loader=FileSystemLoader(_HERE / "templates"),
                                     autoescape=select_autoescape(["html"]),
                                     trim_blocks=True, lstrip_blocks=True)
        # Signers by admin key: a reload that changes the key gets a new one (and old
        # sessions stop verifying).
        self._signers: dict[str, SessionSigner] = {}
        self._revocations: Revocations | None = None

    # -- what is in force ------------------------------------------------------------------

    def policy(self) -> Policy:
        return self._policy()

    def enabled_admin_key(self) -> str:
        """The admin key, or NotFound while the console is off (no admin key, or
        `console.enabled: false`): then /ui does not exist."""
        p = self._policy()
        if not p.server.admin_key or not p.console.enabled:
            raise NotFound("The console is off: it needs server.admin_key set and "
                           "console.enabled true.", code="console_disabled")
        return p.server.admin_key

    def revocations(self) -> Revocations:
        """Signed-out sessions, in Redis or this process (`state.redis_url` is read at
        start-up only, so the first choice stands)."""
        if self._revocations is None:
            state = self._policy().state
            self._revocations = open_revocations(state.redis_url, state.key_prefix)
        return self._revocations

    async def close(self) -> None:
        """At shutdown: the revocations store's connections, if it was ever opened."""
        if self._revocations is not None:
            await self._revocations.close()
            self._revocations = None

    def signer(self, admin_key: str) -> SessionSigner:
        s = self._signers.get(admin_key)
        if s is None:
            epoch = self.revocations().epoch
            self._signers = {admin_key: (s := SessionSigner(admin_key, epoch=epoch))}
        return s

    async def viewer(self, request: Request) -> Viewer:
        """The checked session of a request (AuthError: none, bad, expired, key revoked,
        signed out)."""
        admin_key = self.enabled_admin_key()
        session = self.signer(admin_key).verify(request.cookies.get(COOKIE))
        viewer = check(session, admin_key, self._auth)
        if await self.revocations().is_revoked(session.nonce):
            raise AuthError("This console session was signed out; sign in again.",
                            code="signed_out")
        return viewer

    async def sign_out(self, viewer: Viewer) -> None:
        await self.revocations().revoke(viewer.session.nonce, viewer.session.expires_at)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, request: Request, template: str, viewer: Viewer | None,
               status: int = 200, **context: Any) -> HTMLResponse:
        csrf = None
        if viewer is not None:
            csrf = self.signer(self.enabled_admin_key()).csrf_token(viewer.session)
        if viewer is not None and viewer.admin:
            context.setdefault("tenants", sorted(self._policy().tenants))
        html = self.templates.get_template(template).render(
            viewer=viewer, csrf=csrf, path=request.url.path, **context)
        return HTMLResponse(html, status, headers=_HEADERS)

    def error_page(self, request: Request, e: GatewayError, viewer: Viewer | None
                   ) -> Response:
        return self.render(request, "error.html", viewer, status=e.status, error=e)

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", 303, headers=_HEADERS)

    # -- wrappers ----------------------------------------------------------------------------

    async def _checked(self, request: Request, handler: Handler) -> tuple[Viewer, Response]:
        viewer = await self.viewer(request)
        if request.method == "POST":
            form = await read_form(request)
            request.state.form = form
            token = request.headers.get("x-csrf-token") or form.get("csrf")
            self.signer(self.enabled_admin_key()).check_csrf(viewer.session, token)
        return viewer, await handler(request, viewer)

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """An HTML page: no session → the sign-in page (303); other refusals → an error
        page with the refusal's status."""
        async def endpoint(request: Request) -> Response:
            viewer = None
            try:
                viewer, response = await self._checked(request, handler)
                return response
            except AuthError:
                if request.method == "GET":
                    return self.login_redirect(request)
                e = AuthError("Sign in to the console first.", code="no_session")
                return self.error_page(request, e, None)
            except NotFound as e:
                if e.code == "console_disabled":
                    return Response(status_code=404, headers=_HEADERS)
                return self.error_page(request, e, viewer)
            except GatewayError as e:
                return self.error_page(request, e, viewer)
        return endpoint

    def data(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A data endpoint (JSON, CSV): refusals are the API's error JSON and status."""
        async def endpoint(request: Request) -> Response:
            try:
                _, response = await self._checked(request, handler)
            except GatewayError as e:
                response = Response(json.dumps(e.body()), e.status, headers={
                    **_HEADERS, **e.headers}, media_type="application/json")
            return response
        return endpoint

    def json(self, doc: Any) -> Response:
        return Response(json.dumps(doc), 200, headers=_HEADERS, media_type="application/json")

    def csv(self, text: str, filename: str) -> Response:
        return Response(text, 200, media_type="text/csv", headers={
            **_HEADERS, "content-disposition": f'attachment; filename="{filename}"'})

    # -- the ledger --------------------------------------------------------------------------

    async def read(self, fn: Callable[[], T]) -> T:
        """`fn()` (blocking ledger reads) in a thread, after the writer shipped what has
        settled and the GPU deployments' lifetimes were brought up to now (their heartbeat
        is a minute; a page shows hours to the second); an unreadable ledger is a 503 that
        names no host."""
        await asyncio.to_thread(self._settler.ledger_writer.flush, 5.0)
        if self._gpu is not None:
            await self._gpu.flush()
        try:
            return await asyncio.to_thread(fn)
        except LedgerUnavailable as e:
            log.warning("console: the ledger cannot be read: %s", e)
            raise ServiceUnavailable("The usage ledger cannot be read right now. Retry "
                                     "shortly.", headers={"retry-after": "5"}) from None

    # -- sign-in form ------------------------------------------------------------------------

    def login_token(self) -> str:
        return secrets.token_urlsafe(16)

    @staticmethod
    def headers() -> dict[str, str]:
        return dict(_HEADERS)

    @staticmethod
    def login_cookie_name() -> str:
        return LOGIN_COOKIE
