"""The HTTP surface: OpenAI-compatible routes, /health and vLLM-named /metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from local_backend.embeddings import Embedder, encode_vector
from local_backend.engine.torch_engine import TorchEngine
from local_backend.errors import BackendError, InvalidRequest, ModelNotFound
from local_backend.metrics import BackendMetrics
from local_backend.prompts import chat_prompt_ids, completion_prompt_ids
from local_backend.protocol import ChatRequest, CompletionRequest, EmbeddingRequest, parse_body
from local_backend.responses import (
    CHAT,
    COMPLETION,
    Generation,
    GenerationResponse,
    Shape,
    complete,
    json_body,
    stream,
)


@dataclass(frozen=True, slots=True)
class Backend:
    """What one server serves: a text model (torch engine), an embedding model, or both."""

    metrics: BackendMetrics
    model_name: str | None = None
    engine: TorchEngine | None = None
    embedding_name: str | None = None
    embedder: Embedder | None = None

    def names(self) -> list[str]:
        return [n for n in (self.model_name, self.embedding_name) if n is not None]


def build_app(backend: Backend) -> Starlette:
    routes = _Routes(backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if backend.engine is not None:
            await backend.engine.start()
        try:
            yield
        finally:
            if backend.engine is not None:
                await backend.engine.stop()
            if backend.embedder is not None:
                backend.embedder.close()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", routes.chat, methods=["POST"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/embeddings", routes.embeddings, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
        ],
        exception_handlers={BackendError: _backend_error, HTTPException: _http_error},
        lifespan=lifespan,
    )


class _Routes:
    def __init__(self, backend: Backend) -> None:
        self._b = backend
        self._created = int(time.time())

    async def chat(self, request: Request) -> ASGIApp:
        body = parse_body(ChatRequest, await request.body())
        engine = self._engine(body.model)
        body.check_supported()
        prompt = chat_prompt_ids(engine.tokenizer, body.template_messages())
        params = [body.sampling(len(prompt), engine.max_model_len, i) for i in range(body.n)]
        gen = Generation([engine.submit(prompt, p) for p in params], prompt_tokens=len(prompt))
        return self._respond(gen, CHAT, body.model, body)

    async def completions(self, request: Request) -> ASGIApp:
        body = parse_body(CompletionRequest, await request.body())
        engine = self._engine(body.model)
        body.check_supported()
        prompts = [completion_prompt_ids(engine.tokenizer, p) for p in body.prompts()]
        vocab = len(engine.tokenizer)
        if any(not p or min(p) < 0 or max(p) >= vocab for p in prompts):
            raise InvalidRequest(f"prompt token ids must lie in [0, {vocab}).", param="prompt")
        # Choices are ordered prompt by prompt, n per prompt, as in OpenAI's API.
        work = [(p, body.sampling(len(p), engine.max_model_len, i)) for p in prompts
                for i in range(body.n)]
        handles = [engine.submit(p, params) for p, params in work]
        gen = Generation(handles, prompt_tokens=sum(len(p) for p in prompts))
        return self._respond(gen, COMPLETION, body.model, body)

    def _respond(
        self, gen: Generation, shape: Shape, model: str, body: ChatRequest | CompletionRequest
    ) -> ASGIApp:
        if body.stream:
            chunks = stream(gen, shape, model, body.stream_options)
            return GenerationResponse(chunks, abort=gen.abort, streaming=True)
        payload = json_body(lambda: complete(gen, shape, model))
        return GenerationResponse(payload, abort=gen.abort, streaming=False)

    async def embeddings(self, request: Request) -> Response:
        body = parse_body(EmbeddingRequest, await request.body())
        if self._b.embedder is None or body.model != self._b.embedding_name:
            raise self._not_found(body.model, "embeddings")
        embedder = self._b.embedder
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise InvalidRequest(
                f"dimensions={body.dimensions} is not supported: {body.model} returns "
                f"{embedder.dimensions}-dimensional vectors.",
                param="dimensions",
            )
        result = await embedder.embed(body.inputs())
        data = [
            {"object": "embedding", "index": i,
             "embedding": encode_vector(vector, body.encoding_format)}
            for i, vector in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        return JSONResponse(
            {"object": "list", "data": data, "model": body.model, "usage": usage}
        )

    async def models(self, request: Request) -> Response:
        data = []
        if self._b.engine is not None and self._b.model_name is not None:
            data.append(self._card(self._b.model_name, self._b.engine.max_model_len))
        if self._b.embedder is not None and self._b.embedding_name is not None:
            data.append(self._card(self._b.embedding_name, self._b.embedder.max_tokens))
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)  # vLLM answers 200 with an empty body once it serves

    async def metrics(self, request: Request) -> Response:
        return Response(self._b.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def _engine(self, model: str) -> TorchEngine:
        if self._b.engine is None or model != self._b.model_name:
            raise self._not_found(model, "text generation")
        return self._b.engine

    def _not_found(self, model: str, task: str) -> ModelNotFound:
        available = ", ".join(self._b.names()) or "none"
        return ModelNotFound(
            f"The model `{model}` does not exist or does not serve {task} here. "
            f"Available models: {available}.",
            param="model",
        )

    def _card(self, name: str, max_model_len: int) -> dict[str, object]:
        return {"id": name, "object": "model", "created": self._created,
                "owned_by": "local-backend", "root": name, "max_model_len": max_model_len}


async def _backend_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendError)
    return Response(exc.json_bytes(), status_code=exc.status, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = BackendError(f"{request.method} {request.url.path}: {exc.detail}")
    err.status, err.type, err.code = exc.status_code, "invalid_request_error", None
    return Response(err.json_bytes(), status_code=exc.status_code, media_type="application/json")
