"""Admin API (guarded by `server.admin_key`): the gateway's own state as JSON, the documents the
console's operations pages are drawn from (docs/console.md).

- `GET /admin/deployments`: every deployment's weight, health, circuit, in-flight, scraped
  queue and KV cache, and its last 15 minutes (requests/s, error rate, TTFT p50/p95);
- `GET /admin/limits`: each tenant's limits and budgets against its current usage;
- `GET /admin/policy`: the policy in force (secrets masked), when it was loaded, the last
  reload's result and messages, and the diff against the previous version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.accounting.ledger import LedgerUnavailable
from gateway.auth import api_key_from_headers, check_admin_key
from gateway.console import status
from gateway.errors import GatewayError, NotFound
from gateway.policy.history import PolicyHistory
from gateway.proxy import Proxy
from gateway.responses import RawResponse, error_response

log = logging.getLogger("gateway.api")


async def tenant_limits(proxy: Proxy, tenants: list[str]) -> dict[str, Any]:
    """The `/admin/limits` document for `tenants` (the console passes one tenant's)."""
    policy = proxy.deps.runtime().policy
    try:
        recent = await asyncio.to_thread(status.last_minute, policy, datetime.now(UTC))
    except LedgerUnavailable as e:
        # Limits still show; only the last minute's traffic is missing (and says so).
        log.warning("limits: the ledger cannot be read: %s", e)
        recent = {}
    return await status.limits(policy, proxy.deps.limiter, tenants, recent)


def routes(proxy: Proxy, history: PolicyHistory) -> list[Route]:
    async def guarded(request: Request, build: Any) -> RawResponse:
        try:
            check_admin_key(api_key_from_headers(request.headers),
                            proxy.deps.runtime().policy.server.admin_key)
            doc = await build(request)
        except GatewayError as e:
            return error_response(e)
        return RawResponse(200, json.dumps(doc).encode())

    async def deployments(request: Request) -> RawResponse:
        async def build(request: Request) -> dict[str, Any]:
            return status.deployments(proxy.deps.runtime(), proxy.deps.signals)
        return await guarded(request, build)

    async def limits(request: Request) -> RawResponse:
        async def build(request: Request) -> dict[str, Any]:
            tenants = sorted(proxy.deps.runtime().policy.tenants)
            wanted = request.query_params.get("tenant")
            if wanted is not None:
                if wanted not in tenants:
                    raise NotFound(f"Unknown tenant {wanted!r}; tenants are declared in the "
                                   f"policy: {', '.join(tenants) or 'none'}.", param="tenant")
                tenants = [wanted]
            return await tenant_limits(proxy, tenants)
        return await guarded(request, build)

    async def policy(request: Request) -> RawResponse:
        async def build(request: Request) -> dict[str, Any]:
            return history.as_json()
        return await guarded(request, build)

    return [
        Route("/admin/deployments", deployments, methods=["GET"]),
        Route("/admin/limits", limits, methods=["GET"]),
        Route("/admin/policy", policy, methods=["GET"]),
    ]
