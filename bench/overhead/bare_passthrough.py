"""The floor a Python gateway can reach: a bare Starlette pass-through with no auth, limits,
routing or accounting, forwarding `/v1/chat/completions` and `/v1/responses` (the Responses
API, by the same code) to one upstream over a pooled client.

    python -m bench.overhead.bare_passthrough --upstream http://127.0.0.1:9000/v1 --port 9100
    python -m bench.overhead.bare_passthrough ... --client httpx     # the same over httpx

Run under uvicorn exactly as the gateway runs (uvloop, httptools, no access log), so the
difference between the two is the gateway's own work.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_JSON = {"Content-Type": "application/json"}
# Each route forwards to the upstream's path of the same name.
PATHS = ("/chat/completions", "/responses")


def aiohttp_app(upstream: str) -> Starlette:
    base = upstream.rstrip("/")
    pool: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        yield
        await pool["s"].close()

    async def forward(request: Request) -> Response:
        url = base + request.scope["path"].removeprefix("/v1")
        resp = await pool["s"].post(url, data=await request.body(), headers=_JSON)
        if resp.content_type == "text/event-stream":
            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in resp.content.iter_any():
                    yield chunk

            return StreamingResponse(chunks(), resp.status, media_type="text/event-stream",
                                     background=BackgroundTask(resp.release))
        body = await resp.read()
        resp.release()
        return Response(body, resp.status, media_type="application/json")

    return Starlette(routes=_routes(forward), lifespan=lifespan)


def httpx_app(upstream: str) -> Starlette:
    base = upstream.rstrip("/")
    pool: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        pool["c"] = httpx.AsyncClient(limits=limits, timeout=60.0)
        yield
        await pool["c"].aclose()

    async def forward(request: Request) -> Response:
        client = pool["c"]
        url = base + request.scope["path"].removeprefix("/v1")
        req = client.build_request("POST", url, content=await request.body(), headers=_JSON)
        resp = await client.send(req, stream=True)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(resp.aiter_raw(), resp.status_code,
                                     media_type="text/event-stream",
                                     background=BackgroundTask(resp.aclose))
        body = await resp.aread()
        await resp.aclose()
        return Response(body, resp.status_code, media_type="application/json")

    return Starlette(routes=_routes(forward), lifespan=lifespan)


def _routes(forward: Any) -> list[Route]:
    return [Route("/v1" + path, forward, methods=["POST"]) for path in PATHS]


def build_app(upstream: str, client: str = "aiohttp") -> Any:
    return {"aiohttp": aiohttp_app, "httpx": httpx_app}[client](upstream)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000/v1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    a = p.parse_args(argv)
    uvicorn.run(build_app(a.upstream, a.client), host="127.0.0.1", port=a.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
