"""The console's pages and data endpoints, mounted at `/ui` (docs/console.md).

Finance: spend overview (+ CSV), a tenant's page, the requests explorer — open to the admin
(every tenant) and to a tenant key (its own tenant only: `Viewer.scope` refuses another's with
403 on every page and endpoint). Operations: keys, deployments, policy — the admin only;
budgets and limits — the admin, or a tenant for its own row.

Every figure is computed by the code the CLI and the admin API run (`reports.py`,
`request_list.py`, `Authenticator`, `console/status.py`), so the console is one more client
of the same functions, never a second implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.accounting.known_tenants import UnknownTenant, check_tenant
from gateway.accounting.reports import parse_group_by, render_csv, run_report
from gateway.accounting.request_list import (
    DEFAULT_LIMIT,
    RequestQuery,
    parse_cursor,
    parse_limit,
    parse_status,
    run_listing,
)
from gateway.accounting.request_list_render import render_json as render_requests_json
from gateway.accounting.request_list_render import request_json
from gateway.api.admin import key_request
from gateway.api.admin_status import tenant_limits
from gateway.console import finance, status
from gateway.console.session import COOKIE, LOGIN_COOKIE, check_login_csrf, sign_in
from gateway.console.session import Viewer as Viewer
from gateway.console.web import ConsoleWeb, read_form, secure
from gateway.errors import AuthError, GatewayError, InvalidRequest, NotFound
from gateway.policy.checks import known
from gateway.policy.history import PolicyHistory
from gateway.proxy import Proxy

_STATIC = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class Console:
    def __init__(self, proxy: Proxy, auth: Any, settler: Any, history: PolicyHistory,
                 gpu_lifetimes: Any = None) -> None:
        self.proxy = proxy
        self.auth = auth
        self.history = history
        self.web = ConsoleWeb(lambda: proxy.deps.runtime().policy, auth, settler,
                              gpu_lifetimes)

    # -- sign-in -----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        try:
            self.web.enabled_admin_key()
        except NotFound:
            return Response(status_code=404)
        token = self.web.login_token()
        r = self.web.render(request, "login.html", None, token=token,
                            next=_safe_next(request.query_params.get("next")), error=None)
        r.set_cookie(LOGIN_COOKIE, token, max_age=900, httponly=True, samesite="strict",
                     secure=secure(request), path="/ui")
        return r

    async def login(self, request: Request) -> Response:
        try:
            admin_key = self.web.enabled_admin_key()
        except NotFound:
            return Response(status_code=404)
        form = await read_form(request)
        nxt = _safe_next(form.get("next"))
        try:
            check_login_csrf(request.cookies.get(LOGIN_COOKIE), form.get("csrf"))
            kind, digest, tenant = sign_in(form.get("key", "").strip(), admin_key, self.auth)
        except AuthError:
            token = self.web.login_token()
            refused = self.web.render(request, "login.html", None, status=401, token=token,
                                next=nxt, error="That key is not valid here (unknown, revoked "
                                "or expired).")
            refused.set_cookie(LOGIN_COOKIE, token, max_age=900, httponly=True,
                               samesite="strict", secure=secure(request), path="/ui")
            return refused
        except GatewayError as e:
            return self.web.error_page(request, e, None)
        ttl = self.web.policy().console.session_ttl_s
        cookie = self.web.signer(admin_key).issue(kind, digest, tenant, ttl)
        r = RedirectResponse(nxt or ("/ui/spend" if kind == "admin" else f"/ui/tenants/{tenant}"),
                             303, headers=self.web.headers())
        r.set_cookie(COOKIE, cookie, max_age=ttl, httponly=True, samesite="strict",
                     secure=secure(request), path="/ui")
        r.delete_cookie(LOGIN_COOKIE, path="/ui")
        return r

    async def logout(self, request: Request, viewer: Viewer) -> Response:
        # Ended on the server as well: a copy of the cookie stops working on every replica.
        await self.web.sign_out(viewer)
        r = RedirectResponse("/ui/login", 303, headers=self.web.headers())
        r.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return r

    async def home(self, request: Request, viewer: Viewer) -> Response:
        target = "/ui/spend" if viewer.admin else f"/ui/tenants/{viewer.tenant}"
        return RedirectResponse(target, 303, headers=self.web.headers())

    # -- finance -----------------------------------------------------------------------------

    def _group_by(self, request: Request) -> tuple[str, ...]:
        try:
            return parse_group_by(request.query_params.get("group_by") or "tenant,model")
        except ValueError as e:
            raise InvalidRequest(str(e), param="group_by") from None

    async def _known(self, tenant: str) -> None:
        policy = self.web.policy()
        try:
            await self.web.read(lambda: check_tenant(policy, tenant))
        except UnknownTenant as e:
            raise NotFound(f"Unknown tenant {e.tenant!r}: not in the policy and no usage in "
                           f"the ledger. Known tenants: {known(e.known)}.",
                           param="tenant") from None

    async def _spend(self, request: Request, viewer: Viewer) -> finance.Spend:
        q = request.query_params
        start, end = finance.period(q)
        tenant = viewer.scope(q.get("tenant") or None)
        if tenant is not None and viewer.admin:
            await self._known(tenant)
        policy = self.web.policy()
        by = q.get("by") or ("tenant" if tenant is None else "model")
        group_by = self._group_by(request)
        return await self.web.read(lambda: finance.spend(policy, start, end, tenant, by,
                                                         group_by))

    async def spend_page(self, request: Request, viewer: Viewer) -> Response:
        s = await self._spend(request, viewer)
        return self.web.render(request, "spend.html", viewer, title="Spend overview", s=s,
                               figures={"spend": s.figure}, query=request.url.query,
                               tenants=self._tenants(viewer), groups=finance.CHART_GROUPS)

    async def spend_data(self, request: Request, viewer: Viewer) -> Response:
        s = await self._spend(request, viewer)
        return self.web.json({"from": s.start.isoformat(), "to": s.end.isoformat(),
                              "tenant": s.tenant, "totals": s.totals, "columns": s.columns,
                              "rows": s.rows})

    async def spend_csv(self, request: Request, viewer: Viewer) -> Response:
        q = request.query_params
        start, end = finance.period(q)
        tenant = viewer.scope(q.get("tenant") or None)
        policy = self.web.policy()
        group_by = self._group_by(request)
        report = await self.web.read(lambda: run_report(
            policy.ledger.url, start, end, tenant=tenant, group_by=group_by, policy=policy,
            schema=policy.ledger.schema_name))
        return self.web.csv(render_csv(report), f"usage-{start}-{end}.csv")

    async def tenant_page(self, request: Request, viewer: Viewer) -> Response:
        tenant = viewer.scope(request.path_params["tenant"])
        assert tenant is not None
        if viewer.admin:
            await self._known(tenant)
        start, end = finance.period(request.query_params)
        policy = self.web.policy()
        t = await self.web.read(lambda: finance.tenant_page(policy, tenant, start, end))
        return self.web.render(
            request, "tenant.html", viewer, title=f"Tenant {tenant}", t=t,
            figures={"cost": t.cost_figure, "tokens": t.tokens_figure,
                     "burn": t.burn_figure})

    def _query(self, request: Request, viewer: Viewer) -> RequestQuery:
        q = request.query_params
        start, end = finance.period(q)
        tenant = viewer.scope(q.get("tenant") or None)
        try:
            st = parse_status(q["status"]) if q.get("status") else None
        except ValueError as e:
            raise InvalidRequest(f"{e}.", param="status") from None
        try:
            limit = parse_limit(q["limit"]) if q.get("limit") else DEFAULT_LIMIT
        except ValueError as e:
            raise InvalidRequest(f"{e}.", param="limit") from None
        try:
            before = parse_cursor(q["before"]) if q.get("before") else None
        except ValueError as e:
            raise InvalidRequest(f"{e}.", param="before") from None
        return RequestQuery(start, end, tenant=tenant, model=q.get("model") or None, status=st,
                            key_id=q.get("key_id") or None,
                            client_request_id=q.get("client_request_id") or None, limit=limit,
                            before=before)

    async def requests_page(self, request: Request, viewer: Viewer) -> Response:
        query = self._query(request, viewer)
        policy = self.web.policy()
        listing = await self.web.read(lambda: run_listing(policy.ledger.url, query,
                                                          schema=policy.ledger.schema_name))
        # The API's own JSON rows: a tenant's view leaves out operator-only error text.
        rows = [request_json(r, viewer.admin) for r in listing.requests]
        older = None
        if listing.next_cursor is not None:  # the same filters, one page further back
            params = {k: v for k, v in request.query_params.items() if k != "before"}
            older = "/ui/requests?" + urlencode({**params, "before": listing.next_cursor})
        return self.web.render(request, "requests.html", viewer, title="Requests", rows=rows,
                               listing=listing, q=request.query_params,
                               tenants=self._tenants(viewer), older=older)

    async def requests_data(self, request: Request, viewer: Viewer) -> Response:
        query = self._query(request, viewer)
        policy = self.web.policy()
        listing = await self.web.read(lambda: run_listing(policy.ledger.url, query,
                                                          schema=policy.ledger.schema_name))
        return Response(render_requests_json(listing, viewer.admin), 200,
                        headers=self.web.headers(), media_type="application/json")

    def _tenants(self, viewer: Viewer) -> list[str]:
        return sorted(self.web.policy().tenants) if viewer.admin else [viewer.tenant or ""]

    # -- operations --------------------------------------------------------------------------

    async def keys_page(self, request: Request, viewer: Viewer, issued: dict[str, Any] | None
                        = None, status_code: int = 200, error: str | None = None) -> Response:
        viewer.require_admin()
        policy = self.web.policy()
        keys = await status.keys_with_use(self.auth, policy, None)
        return self.web.render(request, "keys.html", viewer, status=status_code, title="Keys",
                               keys=keys, tenants=sorted(policy.tenants), issued=issued,
                               error=error)

    async def create_key(self, request: Request, viewer: Viewer) -> Response:
        viewer.require_admin()
        form: dict[str, str] = request.state.form
        body = {"tenant": form.get("tenant"), "name": form.get("name") or None,
                "expires": form.get("expires") or None}
        try:
            tenant, name, until = key_request(body, self.web.policy())
            issued = await self.auth.create_key(tenant, name, until)
        except GatewayError as e:
            return await self.keys_page(request, viewer, status_code=e.status, error=e.message)
        # Shown once, in this response only; the store keeps its hash.
        return await self.keys_page(request, viewer, issued={"key": issued.key,
                                                             **issued.record.public()})

    async def revoke_key(self, request: Request, viewer: Viewer) -> Response:
        viewer.require_admin()
        try:
            await self.auth.revoke_key(request.path_params["key_id"])
        except GatewayError as e:
            return await self.keys_page(request, viewer, status_code=e.status, error=e.message)
        return RedirectResponse("/ui/keys", 303, headers=self.web.headers())

    async def deployments_page(self, request: Request, viewer: Viewer) -> Response:
        viewer.require_admin()
        doc = status.deployments(self.proxy.deps.runtime(), self.proxy.deps.signals)
        return self.web.render(request, "deployments.html", viewer, title="Deployments",
                               doc=doc)

    async def deployments_data(self, request: Request, viewer: Viewer) -> Response:
        viewer.require_admin()
        return self.web.json(status.deployments(self.proxy.deps.runtime(),
                                                self.proxy.deps.signals))

    async def policy_page(self, request: Request, viewer: Viewer) -> Response:
        viewer.require_admin()
        return self.web.render(request, "policy.html", viewer, title="Policy",
                               doc=self.history.as_json(), diff=self.history.diff())

    async def limits_page(self, request: Request, viewer: Viewer) -> Response:
        tenants = sorted(self.web.policy().tenants)
        if not viewer.admin:
            tenants = [t for t in tenants if t == viewer.tenant]
        doc = await tenant_limits(self.proxy, tenants)
        return self.web.render(request, "limits.html", viewer, title="Budgets and limits",
                               doc=doc)

    async def alerts_page(self, request: Request, viewer: Viewer) -> Response:
        """The alert webhooks' delivery log: the rows `GET /admin/alerts/deliveries` serves."""
        viewer.require_admin()
        alerts = getattr(self.proxy.deps, "alerts", None)
        if alerts is None:
            raise NotFound("This gateway has no alert webhooks.")
        return self.web.render(request, "alerts.html", viewer, title="Alert deliveries",
                               rows=alerts.deliveries(), pending=alerts.dispatcher.pending,
                               dropped=alerts.dispatcher.dropped)

    # -- static ------------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        headers = {"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"}
        if name == "plotly.min.js":
            return FileResponse(_plotly_js(), media_type="text/javascript", headers=headers)
        if name not in _STATIC_FILES:
            return Response(status_code=404)
        return FileResponse(_STATIC / name, media_type=_STATIC_FILES[name], headers=headers)

    def routes(self) -> list[BaseRoute]:
        page, data = self.web.page, self.web.data
        return [
            Route("/", page(self.home), methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", page(self.logout), methods=["POST"]),
            Route("/spend", page(self.spend_page), methods=["GET"]),
            Route("/spend.csv", data(self.spend_csv), methods=["GET"]),
            Route("/tenants/{tenant}", page(self.tenant_page), methods=["GET"]),
            Route("/requests", page(self.requests_page), methods=["GET"]),
            Route("/keys", page(self.keys_page), methods=["GET"]),
            Route("/keys", page(self.create_key), methods=["POST"]),
            Route("/keys/{key_id}/revoke", page(self.revoke_key), methods=["POST"]),
            Route("/deployments", page(self.deployments_page), methods=["GET"]),
            Route("/policy", page(self.policy_page), methods=["GET"]),
            Route("/limits", page(self.limits_page), methods=["GET"]),
            Route("/alerts", page(self.alerts_page), methods=["GET"]),
            Route("/data/spend", data(self.spend_data), methods=["GET"]),
            Route("/data/requests", data(self.requests_data), methods=["GET"]),
            Route("/data/deployments", data(self.deployments_data), methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
        ]


def _safe_next(target: str | None) -> str | None:
    """Only a console path: an open redirect (`next=https://evil`) is dropped."""
    if target and target.startswith("/ui/") and not target.startswith("//") \
            and "\\" not in target and "/login" not in target:
        return target
    return None

