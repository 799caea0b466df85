"""`POST /v1/moderations`: OpenAI's moderation API, through the proxy exactly as embeddings go
(admission, routing, fallback, the ledger). Clients call it directly; the guards' model-based
check can reach it through the same routing. Only OpenAI-compatible providers serve it (not
`kind: local`, Azure, Anthropic or Gemini: those refuse with a 400 naming their kind)."""

from __future__ import annotations

from starlette.routing import Route

from gateway.api.openai import _endpoint
from gateway.proxy import Proxy


def routes(proxy: Proxy) -> list[Route]:
    handler = _endpoint(proxy, "moderations")
    return [
        Route("/v1/moderations", handler, methods=["POST"]),
        # Clients configured with a base URL without /v1 still work.
        Route("/moderations", handler, methods=["POST"]),
    ]
