"""Reranking and scoring: `POST /v1/rerank` (Cohere's and Jina's shape) and `POST /v1/score`
(vLLM's), through the proxy exactly as embeddings go: admission, routing, fallback, the ledger.

vLLM serves both (`vllm serve BAAI/bge-reranker-base --task score`) at these paths with and
without `/v1`, so a client pointed at vLLM works unchanged against the gateway. Providers that
have no such endpoint refuse with a 400 naming their kind (docs/providers.md, endpoints).
"""

from __future__ import annotations

from starlette.routing import Route

from gateway.api.openai import _endpoint
from gateway.proxy import Proxy


def routes(proxy: Proxy) -> list[Route]:
    # The OpenAI surface's handler: parse and validate (api/bodies.py), then the proxy.
    rerank, score = _endpoint(proxy, "rerank"), _endpoint(proxy, "score")
    return [
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v1/score", score, methods=["POST"]),
        # vLLM's own paths, for clients configured with its base URL without /v1.
        Route("/rerank", rerank, methods=["POST"]),
        Route("/score", score, methods=["POST"]),
    ]
