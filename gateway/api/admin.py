"""Admin API (guarded by `server.admin_key`) and a tenant's own usage at `/v1/usage` and its own
requests at `/v1/usage/requests`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.routing import Route

from gateway.accounting.known_tenants import UnknownTenant, check_tenant
from gateway.accounting.ledger import LedgerUnavailable
from gateway.accounting.pricing import plain
from gateway.accounting.reports import parse_group_by, render_csv, render_json, run_report
from gateway.accounting.request_list import (
    DEFAULT_LIMIT,
    RequestQuery,
    parse_cursor,
    parse_limit,
    parse_status,
    run_listing,
)
from gateway.accounting.request_list_render import render_csv as render_requests_csv
from gateway.accounting.request_list_render import render_json as render_requests_json
from gateway.api.parse import parse_json_object, read_body
from gateway.auth import Authenticator, api_key_from_headers, check_admin_key
from gateway.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.limits.budget import BudgetStatus
from gateway.policy.checks import known
from gateway.policy.models import Policy
from gateway.policy.tenants import parse_expiry
from gateway.proxy import Proxy
from gateway.responses import RawResponse, error_response

log = logging.getLogger("gateway.api")
T = TypeVar("T")


def _dates(request: Request) -> tuple[date, date]:
    q = request.query_params
    today = datetime.now(UTC).date()
    try:
        start = date.fromisoformat(q["from"]) if "from" in q else today.replace(day=1)
        end = date.fromisoformat(q["to"]) if "to" in q else today
    except ValueError as e:
        raise InvalidRequest(f"from/to must be ISO dates (YYYY-MM-DD): {e}") from None
    if end < start:
        raise InvalidRequest(f"'to' ({end}) is before 'from' ({start}).")
    if end - start > timedelta(days=3660):
        raise InvalidRequest("A report covers at most ten years; narrow from/to.")
    return start, end


def _format(request: Request) -> str:
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv.", param="format")
    return fmt


def _request_query(request: Request, tenant: str | None) -> RequestQuery:
    """The filters of a request listing; a bad one is a 400 naming it."""
    start, end = _dates(request)
    q = request.query_params
    try:
        status = parse_status(q["status"]) if "status" in q else None
    except ValueError as e:
        raise InvalidRequest(f"{e}.", param="status") from None
    try:
        limit = parse_limit(q["limit"]) if "limit" in q else DEFAULT_LIMIT
    except ValueError as e:
        raise InvalidRequest(f"{e}.", param="limit") from None
    try:  # keyset pagination: the `next_cursor` of the previous page
        before = parse_cursor(q["before"]) if q.get("before") else None
    except ValueError as e:
        raise InvalidRequest(f"{e}.", param="before") from None
    return RequestQuery(start, end, tenant=tenant, model=q.get("model"), status=status,
                        key_id=q.get("key_id"), client_request_id=q.get("client_request_id"),
                        limit=limit, before=before)


def _budget_json(s: BudgetStatus) -> dict[str, Any]:
    # Money as plain decimal strings (never floats), as the usage reports write it.
    return {"period": s.period, "period_id": s.period_id, "limit_usd": plain(s.limit_usd),
            "spent_usd": plain(s.spent_usd), "reserved_usd": plain(s.reserved_usd),
            "remaining_usd": plain(max(s.limit_usd - s.spent_usd - s.reserved_usd, Decimal(0))),
            "resets_at": s.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")}


def key_request(body: dict[str, Any], policy: Policy) -> tuple[str, str | None,
                                                                datetime | None]:
    """(tenant, name, expiry) of a key to issue, checked (a 400 naming the field); the admin
    API and the console's keys page both issue keys through it."""
    tenant = body.get("tenant")
    if not isinstance(tenant, str) or tenant not in policy.tenants:
        raise InvalidRequest(f"Unknown tenant {tenant!r}; tenants are declared in the "
                             f"policy: {', '.join(sorted(policy.tenants)) or 'none'}.",
                             param="tenant")
    name, expires = body.get("name"), body.get("expires")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("name must be a string (a label for the key) or null.",
                             param="name")
    if expires is not None and not isinstance(expires, str):
        raise InvalidRequest("expires must be a string: an ISO date (2026-03-31) or "
                             "datetime (2026-03-31T18:00:00Z), or null.", param="expires")
    try:
        until = parse_expiry(expires) if expires is not None else None
    except ValueError as e:
        raise InvalidRequest(f"{e}.", param="expires") from None
    return tenant, name, until


def routes(proxy: Proxy, auth: Authenticator, settler: Any) -> list[Route]:
    def admin(request: Request) -> None:
        check_admin_key(api_key_from_headers(request.headers),
                        proxy.deps.runtime().policy.server.admin_key)

    async def read_ledger(tenant: str | None, must_exist: bool,
                          read: Callable[[Policy], T]) -> T:
        """`read(policy)` in a thread, after the writer flushed what has settled (a listing
        right after a request shows it); the ledger's errors become the gateway's."""
        policy = proxy.deps.runtime().policy
        await asyncio.to_thread(settler.ledger_writer.flush, 5.0)
        try:
            if must_exist and tenant is not None:
                await asyncio.to_thread(check_tenant, policy, tenant)
            return await asyncio.to_thread(read, policy)
        except UnknownTenant as e:
            raise NotFound(f"Unknown tenant {e.tenant!r}: not in the policy and no usage in "
                           f"the ledger. Known tenants: {known(e.known)}.",
                           param="tenant") from None
        except LedgerUnavailable as e:
            # The detail names the database's user, host, port and name: operators read it in
            # the log; callers (tenants among them) only learn that it is down.
            log.warning("usage query failed: the ledger cannot be read: %s", e)
            raise ServiceUnavailable("The usage ledger cannot be read right now. Retry "
                                     "shortly.", headers={"retry-after": "5"}) from None

    async def usage_response(request: Request, tenant: str | None,
                             must_exist: bool = False) -> RawResponse:
        start, end = _dates(request)
        q = request.query_params
        try:
            group_by = parse_group_by(q.get("group_by", "tenant,model"))
        except ValueError as e:
            raise InvalidRequest(str(e), param="group_by") from None
        fmt = _format(request)
        report = await read_ledger(tenant, must_exist, lambda policy: run_report(
            policy.ledger.url, start, end, tenant=tenant, group_by=group_by, policy=policy,
            schema=policy.ledger.schema_name))
        if fmt == "csv":
            return RawResponse(200, render_csv(report).encode(), content_type=b"text/csv")
        return RawResponse(200, render_json(report).encode())

    async def requests_response(request: Request, tenant: str | None, *, operator: bool,
                                must_exist: bool = False) -> RawResponse:
        query = _request_query(request, tenant)
        fmt = _format(request)
        listing = await read_ledger(tenant, must_exist, lambda policy: run_listing(
            policy.ledger.url, query, schema=policy.ledger.schema_name))
        if fmt == "csv":
            return RawResponse(200, render_requests_csv(listing, operator).encode(),
                               content_type=b"text/csv")
        return RawResponse(200, render_requests_json(listing, operator).encode())

    async def guarded(request: Request, fn: Any) -> RawResponse:
        try:
            admin(request)
            return await fn(request)  # type: ignore[no-any-return]
        except GatewayError as e:
            return error_response(e)

    async def create_key(request: Request) -> RawResponse:
        async def go(request: Request) -> RawResponse:
            limit = proxy.deps.runtime().policy.server.max_body_bytes
            body = parse_json_object(await read_body(request, limit))
            tenant, name, until = key_request(body, proxy.deps.runtime().policy)
            issued = await auth.create_key(tenant, name, until)
            out = {"key": issued.key, **issued.record.public()}
            return RawResponse(201, json.dumps(out, default=str).encode())
        return await guarded(request, go)

    async def list_keys(request: Request) -> RawResponse:
        async def go(request: Request) -> RawResponse:
            keys = await auth.list_keys(request.query_params.get("tenant"))
            return RawResponse(200, json.dumps({"data": [k.public() for k in keys]},
                                               default=str).encode())
        return await guarded(request, go)

    async def revoke_key(request: Request) -> RawResponse:
        async def go(request: Request) -> RawResponse:
            rec = await auth.revoke_key(request.path_params["key_id"])
            return RawResponse(200, json.dumps(rec.public(), default=str).encode())
        return await guarded(request, go)

    async def admin_usage(request: Request) -> RawResponse:
        return await guarded(request, lambda r: usage_response(
            r, r.query_params.get("tenant"), must_exist=True))

    async def admin_requests(request: Request) -> RawResponse:
        return await guarded(request, lambda r: requests_response(
            r, r.query_params.get("tenant"), operator=True, must_exist=True))

    async def budget(request: Request) -> RawResponse:
        async def go(request: Request) -> RawResponse:
            limiter = proxy.deps.limiter
            tenant = request.path_params["tenant"]
            tenants = proxy.deps.runtime().policy.tenants
            if tenant not in tenants:
                raise NotFound(f"Unknown tenant {tenant!r}; tenants are declared in the policy: "
                               f"{', '.join(sorted(tenants)) or 'none'}.")
            status = await limiter.budget_status(tenant) if limiter is not None else []
            return RawResponse(200, json.dumps(
                {"tenant": tenant, "budget": [_budget_json(s) for s in status]}).encode())
        return await guarded(request, go)

    async def own_usage(request: Request) -> RawResponse:
        """A tenant's key reads its own usage, never another tenant's."""
        try:
            principal = auth.authenticate(api_key_from_headers(request.headers))
            return await usage_response(request, principal.tenant)
        except GatewayError as e:
            return error_response(e)

    async def own_requests(request: Request) -> RawResponse:
        """A tenant's key lists its own tenant's requests, whatever `tenant` it asks for."""
        try:
            principal = auth.authenticate(api_key_from_headers(request.headers))
            return await requests_response(request, principal.tenant, operator=False)
        except GatewayError as e:
            return error_response(e)

    return [
        Route("/admin/keys", create_key, methods=["POST"]),
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/admin/usage", admin_usage, methods=["GET"]),
        Route("/admin/requests", admin_requests, methods=["GET"]),
        Route("/admin/budgets/{tenant}", budget, methods=["GET"]),
        Route("/v1/usage", own_usage, methods=["GET"]),
        Route("/v1/usage/requests", own_requests, methods=["GET"]),
    ]
