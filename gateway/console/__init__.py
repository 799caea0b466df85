"""The web console at `/ui`: finance and operations pages served by the gateway itself
(docs/console.md). `routes()` is what `build_app` mounts; everything else is inside."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import Mount

from gateway.policy.history import PolicyHistory


def mount(proxy: Any, auth: Any, settler: Any, history: PolicyHistory,
          gpu_lifetimes: Any = None) -> tuple[Mount, Callable[[], Awaitable[None]]]:
    """`/ui`, answering 404 while `server.admin_key` is unset or `console.enabled` false
    (checked per request, so a reload turns it on or off); and what closes it at shutdown
    (the sign-out store's Redis connections)."""
    from gateway.console.pages import Console

    c = Console(proxy, auth, settler, history, gpu_lifetimes)
    return Mount("/ui", routes=c.routes()), c.web.close
