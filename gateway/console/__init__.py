"""The web console at `/ui`: finance and operations pages served by the gateway itself
(docs/console.md). `routes()` is what `build_app` mounts; everything else is inside."""

from __future__ import annotations

from typing import Any

from starlette.routing import Mount

from gateway.policy.history import PolicyHistory


def mount(proxy: Any, auth: Any, settler: Any, history: PolicyHistory,
          gpu_lifetimes: Any = None) -> Mount:
    """`/ui`, answering 404 while `server.admin_key` is unset or `console.enabled` false
    (checked per request, so a reload turns it on or off)."""
    from gateway.console.pages import Console

    return Mount("/ui", routes=Console(proxy, auth, settler, history,
                                         gpu_lifetimes).routes())
