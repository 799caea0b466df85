"""`/admin/rollouts…`: a model's rollout, read and steered (guarded by `server.admin_key`).

    GET  /admin/rollouts                      every rollout's status
    GET  /admin/rollouts/{model}              one rollout: step, split, gates with both figures
    POST /admin/rollouts/{model}/{action}     pause | resume | promote | abort
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import api_key_from_headers, check_admin_key
from gateway.errors import GatewayError, NotFound, ServiceUnavailable
from gateway.policy.checks import known
from gateway.proxy import Proxy
from gateway.responses import RawResponse, error_response
from gateway.rollouts import RolloutController, UnknownRollout

log = logging.getLogger("gateway.api")

ACTIONS = ("pause", "resume", "promote", "abort")


def _redis_error() -> type[BaseException]:
    """Redis's error class, imported only once something has failed: a gateway without Redis
    never loads the client (8 MB resident)."""
    from redis.exceptions import RedisError

    return RedisError


def routes(proxy: Proxy, rollouts: RolloutController) -> list[Route]:
    async def guarded(request: Request, fn: Any) -> RawResponse:
        try:
            check_admin_key(api_key_from_headers(request.headers),
                            proxy.deps.runtime().policy.server.admin_key)
            try:
                out = await fn(request)
            except UnknownRollout as e:
                raise NotFound(f"Model {e.model!r} has no rollout in the policy. Models with "
                               f"one: {known(e.known)}.", param="model") from None
            except ValueError as e:
                raise GatewayError(f"{e}.", status=409, type="invalid_request_error",
                                   code="rollout_state") from None
            except (OSError, RuntimeError, _redis_error()) as e:
                log.warning("rollout state cannot be read or written: %s", e)
                raise ServiceUnavailable("The rollout state store cannot be reached; retry "
                                         "shortly.", headers={"retry-after": "2"}) from None
            return RawResponse(200, json.dumps(out).encode())
        except GatewayError as e:
            return error_response(e)

    async def list_all(request: Request) -> RawResponse:
        async def go(request: Request) -> Any:
            return {"object": "list",
                    "data": [await rollouts.status(m) for m in sorted(rollouts.rollouts)]}
        return await guarded(request, go)

    async def one(request: Request) -> RawResponse:
        async def go(request: Request) -> Any:
            return await rollouts.status(request.path_params["model"])
        return await guarded(request, go)

    async def control(request: Request) -> RawResponse:
        async def go(request: Request) -> Any:
            action = request.path_params["action"]
            if action not in ACTIONS:
                raise NotFound(f"Unknown rollout action {action!r}; use one of "
                               f"{', '.join(ACTIONS)}.", param="action")
            return await rollouts.control(request.path_params["model"], action)
        return await guarded(request, go)

    return [
        Route("/admin/rollouts", list_all, methods=["GET"]),
        Route("/admin/rollouts/{model:path}/{action}", control, methods=["POST"]),
        Route("/admin/rollouts/{model:path}", one, methods=["GET"]),
    ]
