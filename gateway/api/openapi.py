"""The gateway's public API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Every route is one row of `OPERATIONS`: its method and path, who may call it, its body, its
success reply and the error statuses it can answer. The request bodies are the pydantic models
the handlers validate with (`api/bodies.py`), turned into JSON Schema here, so what is
documented is what is enforced; the replies are in `openapi_schemas.py`. A new route is one new
row (`tests/unit/api/test_openapi.py` fails while a mounted route has none).

The document is built once, when the app is built, and served as bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.routing import Route

from gateway.api.bodies import (
    ChatRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    ModerationRequest,
    RerankRequest,
    ResponsesRequest,
    ScoreRequest,
)
from gateway.api.openapi_schemas import RESPONSES, Schema, ref
from gateway.responses import RawResponse

Auth = Literal["key", "admin", "none"]


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter (path parameters come from the `{name}` parts of the path)."""

    name: str
    description: str
    schema: Schema = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    id: str
    summary: str
    tag: str
    ok: Mapping[str, Schema]  # media type -> schema of the success reply
    errors: tuple[int, ...]
    status: int = 200
    body: type[BaseModel] | str | None = None  # a bodies.py model, or a RESPONSES name
    auth: Auth = "key"
    params: tuple[Param, ...] = ()
    anthropic: bool = False  # errors in Anthropic's shape
    aliases: tuple[str, ...] = ()  # the same handler at another path
    notes: Mapping[int, str] = field(default_factory=dict)  # route-specific status texts


# What each status means, wherever it is not said more precisely by an operation's `notes`.
STATUS_TEXT: dict[int, str] = {
    400: "The request is malformed: `param` names the field and the message says what to "
         "change. Also a backend's own refusal of the request (its message, scrubbed of "
         "secrets), and a context-length error when no context fallback fits.",
    401: "No API key, or one this gateway does not know (or that expired or was revoked).",
    402: "The tenant's budget for the period is spent (`budget.on_exceed: block`).",
    403: "The key may not use this model.",
    404: "The model does not exist, or this key may not see it; the message lists the models "
         "it can use.",
    408: "The client paused the request headers or body longer than `server.header_timeout_s` "
         "/ `server.body_timeout_s`; the connection is closed.",
    413: "The body is over `server.max_body_bytes`.",
    429: "A rate (RPM, TPM) or concurrency limit was reached; `Retry-After` says when to retry.",
    502: "Every attempt at a backend failed (connect, timeout, 5xx, a dropped stream before the "
         "first byte); the message names what was tried.",
    503: "Nothing can serve the request now: every deployment is cooling down or unhealthy, the "
         "limit store is down with `fail_closed`, the gateway is starting or draining, or the "
         "connection cap (`server.max_connections`) is reached. `Retry-After` when known.",
}

# Statuses the connection layer answers before any handler runs (gateway/connection.py): in
# OpenAI's shape on every route, /v1/messages included.
_CONNECTION_STATUSES = frozenset({408})
_PROXIED = (400, 401, 402, 403, 404, 408, 413, 429, 502, 503)
# Counting is not admitted (no 402, 429) and always answers (no 502: an unreachable provider's
# count is estimated instead).
_COUNTED = (400, 401, 403, 404, 408, 413, 503)
_COUNT_NOTES = {400: "The request is malformed (`param` names the field), or the provider that "
                     "counts refused it.",
                503: "The connection cap is reached, or (Responses) the stored conversation "
                     "`previous_response_id` names cannot be read now."}
_ADMIN = (401, 403)
_ADMIN_NOTES = {401: "No admin key, or a wrong one.",
                403: "The admin API is disabled: `server.admin_key` is not set."}
_DATES = (
    Param("from", "First day (YYYY-MM-DD, UTC, inclusive); default: the first of this month.",
          {"type": "string", "format": "date"}),
    Param("to", "Last day (YYYY-MM-DD, UTC, inclusive); default: today.",
          {"type": "string", "format": "date"}),
    Param("group_by", "Comma-separated: tenant, key, model, deployment, provider, day "
          "(default tenant,model)."),
    Param("format", "json (default) or csv.", {"type": "string", "enum": ["json", "csv"]}),
)
_USAGE_OK = {"application/json": ref("UsageReport"), "text/csv": {"type": "string"}}
# A request listing (accounting/request_list.py): the period and format of a report, no
# group_by, and its own filters.
_REQUEST_FILTERS = (
    *(p for p in _DATES if p.name != "group_by"),
    Param("model", "Only this model (the name clients ask for)."),
    Param("status", "An HTTP status (429), or `error` for any status >= 400."),
    Param("key_id", "Only this key id."),
    Param("client_request_id", "Only requests the client sent with this `x-request-id`."),
    Param("limit", "At most this many requests, newest first (default 100).",
          {"type": "integer", "minimum": 1, "maximum": 10000}),
    Param("before", "Only requests older than this page cursor: the previous page's "
          "`next_cursor`."),
)
_REQUESTS_OK = {"application/json": ref("RequestList"), "text/csv": {"type": "string"}}


_ROLLOUT_STORE = "The rollout state store (Redis) cannot be reached."
# The stored-response routes (docs/responses.md, "State").
_STORED_NOTES = {404: "No stored response with this id for this key's tenant (another "
                      "tenant's reads exactly the same), or it expired.",
                 503: "Stored responses cannot be read right now."}


def _json(name: str) -> dict[str, Schema]:
    return {"application/json": ref(name)}


def _streams(name: str) -> dict[str, Schema]:
    """A JSON reply, or with `stream: true` server-sent events (the schema is one event's)."""
    return {"application/json": ref(name), "text/event-stream": ref(f"{name}Event")}


OPERATIONS: tuple[Operation, ...] = (
    # ---- OpenAI-compatible (api/openai.py)
    Operation("POST", "/v1/chat/completions", "createChatCompletion", "Create a chat completion",
              "openai", _streams("ChatCompletion"), _PROXIED,
              body=ChatRequest, aliases=("/chat/completions",)),
    Operation("POST", "/v1/completions", "createCompletion", "Create a text completion",
              "openai", _streams("Completion"), _PROXIED,
              body=CompletionRequest, aliases=("/completions",)),
    Operation("POST", "/v1/embeddings", "createEmbedding", "Create embeddings", "openai",
              _json("EmbeddingList"), _PROXIED, body=EmbeddingRequest,
              aliases=("/embeddings",)),
    # ---- reranking and scoring (api/rerank.py)
    Operation("POST", "/v1/rerank", "createRerank", "Rerank documents against a query (Cohere "
              "and Jina shape)", "openai", _json("RerankResult"), _PROXIED, body=RerankRequest,
              aliases=("/rerank",)),
    Operation("POST", "/v1/score", "createScore", "Score text pairs (vLLM's score API)",
              "openai", _json("ScoreList"), _PROXIED, body=ScoreRequest, aliases=("/score",)),
    # ---- moderation (api/moderations.py)
    Operation("POST", "/v1/moderations", "createModeration", "Classify text (and images) "
              "against OpenAI's moderation categories, passed through to an OpenAI-compatible "
              "backend", "openai", _json("ModerationList"), _PROXIED, body=ModerationRequest,
              aliases=("/moderations",)),
    Operation("GET", "/v1/models", "listModels", "The models this key may use", "openai",
              _json("ModelList"), (401, 503)),
    Operation("GET", "/v1/models/{model}", "retrieveModel", "One model", "openai",
              _json("Model"), (401, 404, 503)),
    # ---- Anthropic-compatible (api/messages.py)
    Operation("POST", "/v1/messages", "createMessage", "Create a message (Anthropic Messages "
              "API), served by any backend", "anthropic",
              _streams("Message"), _PROXIED, body=MessagesRequest,
              anthropic=True),
    # ---- OpenAI Responses (api/responses.py): proxied, and the tenant's stored responses
    Operation("POST", "/v1/responses", "createResponse", "Create a model response (OpenAI "
              "Responses API), served natively or by translation", "responses",
              _streams("Response"), _PROXIED, body=ResponsesRequest, aliases=("/responses",),
              notes={400: "As for chat, and: `previous_response_id` names no stored response "
                     "of this tenant (`previous_response_not_found`), or the request needs a "
                     "backend speaking Responses natively (built-in tools) and none does."}),
    Operation("GET", "/v1/responses/{response_id}", "retrieveResponse", "A stored response "
              "of this key's tenant", "responses", _json("Response"), (401, 404, 503),
              aliases=("/responses/{response_id}",), notes=_STORED_NOTES),
    Operation("DELETE", "/v1/responses/{response_id}", "deleteResponse", "Delete a stored "
              "response", "responses", _json("DeletedResponse"), (401, 404, 503),
              aliases=("/responses/{response_id}",), notes=_STORED_NOTES),
    Operation("GET", "/v1/responses/{response_id}/input_items", "listInputItems", "The input "
              "items of a stored response", "responses", _json("InputItemList"),
              (400, 401, 404, 503), aliases=("/responses/{response_id}/input_items",),
              params=(Param("after", "Items after this item id."),
                      Param("before", "Items before this item id."),
                      Param("limit", "At most this many (1–100, default 20).",
                            {"type": "integer", "minimum": 1, "maximum": 100}),
                      Param("order", "`asc` or `desc` (default).",
                            {"type": "string", "enum": ["asc", "desc"]})),
              notes=_STORED_NOTES),
    # ---- token counting, no generation and no cost (api/count_tokens.py)
    Operation("POST", "/v1/messages/count_tokens", "countMessageTokens", "Count a Messages "
              "request's input tokens (Anthropic's count_tokens)", "anthropic",
              _json("MessageTokensCount"), _COUNTED, body=CountTokensRequest, anthropic=True,
              notes=_COUNT_NOTES),
    Operation("POST", "/v1/responses/input_tokens", "countResponseInputTokens", "Count a "
              "Responses request's input tokens", "openai", _json("ResponseInputTokens"),
              _COUNTED, body=ResponsesRequest, aliases=("/responses/input_tokens",),
              notes=_COUNT_NOTES),
    # ---- usage and admin (api/admin.py)
    Operation("GET", "/v1/usage", "ownUsage", "This key's tenant's usage", "usage", _USAGE_OK,
              (400, 401, 503), params=_DATES,
              notes={503: "The usage ledger cannot be read right now."}),
    Operation("POST", "/admin/keys", "createKey", "Issue an API key for a tenant", "admin",
              _json("IssuedKey"), (*_ADMIN, 400, 404, 503), status=201, body="CreateKey",
              auth="admin", notes={**_ADMIN_NOTES, 503: "The key database cannot be used."}),
    Operation("GET", "/admin/keys", "listKeys", "Policy and database keys (no secrets)",
              "admin", _json("KeyList"), (*_ADMIN, 503), auth="admin",
              params=(Param("tenant", "Only this tenant's keys."),), notes=_ADMIN_NOTES),
    Operation("DELETE", "/admin/keys/{key_id}", "revokeKey", "Revoke a database key", "admin",
              _json("Key"), (*_ADMIN, 400, 404, 503), auth="admin",
              notes={**_ADMIN_NOTES, 400: "The key is declared in the policy (remove it there), "
                     "or no key database is configured.", 404: "No key with this id."}),
    Operation("GET", "/admin/usage", "usageReport", "Usage and cost report", "admin",
              _USAGE_OK, (*_ADMIN, 400, 404, 503), auth="admin",
              params=(*_DATES, Param("tenant", "Only this tenant.")),
              notes={**_ADMIN_NOTES, 404: "Unknown tenant: not in the policy, no usage.",
                     503: "The usage ledger cannot be read right now."}),
    Operation("GET", "/v1/usage/requests", "ownRequests", "This key's tenant's requests, "
              "newest first", "usage", _REQUESTS_OK, (400, 401, 503), params=_REQUEST_FILTERS,
              notes={503: "The usage ledger cannot be read right now."}),
    Operation("GET", "/admin/requests", "listRequests", "Requests in the ledger, newest first, "
              "with their attempts", "admin", _REQUESTS_OK, (*_ADMIN, 400, 404, 503),
              auth="admin", params=(*_REQUEST_FILTERS, Param("tenant", "Only this tenant.")),
              notes={**_ADMIN_NOTES, 404: "Unknown tenant: not in the policy, no usage.",
                     503: "The usage ledger cannot be read right now."}),
    Operation("GET", "/admin/budgets/{tenant}", "budgetStatus", "A tenant's budget: limit, "
              "spent, reserved, reset", "admin", _json("BudgetStatus"), (*_ADMIN, 404, 503),
              auth="admin", notes={**_ADMIN_NOTES, 404: "The tenant is not in the policy."}),
    # ---- alert webhooks (api/alerts_admin.py)
    Operation("GET", "/admin/alerts/deliveries", "listAlertDeliveries", "The alert webhook "
              "delivery log of this replica, newest first", "admin", _json("AlertDeliveryList"),
              (*_ADMIN, 400), auth="admin",
              params=(Param("event", "Only this event type.", {"type": "string", "enum": [
                          "budget_threshold", "budget_exhausted", "circuit_open", "rollout"]}),
                      Param("status", "Only deliveries in this state.", {
                          "type": "string", "enum": ["pending", "retrying", "delivered",
                                                     "failed", "dropped", "abandoned"]}),
                      Param("limit", "At most this many (default 100).",
                            {"type": "integer", "minimum": 1, "maximum": 100000})),
              notes={**_ADMIN_NOTES, 400: "`event`, `status` or `limit` is not one the "
                     "parameter allows; `param` names it."}),
    # ---- rollouts (api/rollouts.py, docs/rollouts.md)
    Operation("GET", "/admin/rollouts", "listRollouts", "Every model's rollout: step, split, "
              "gates", "admin", _json("RolloutList"), (*_ADMIN, 503), auth="admin",
              notes={**_ADMIN_NOTES, 503: _ROLLOUT_STORE}),
    Operation("GET", "/admin/rollouts/{model}", "rolloutStatus", "One model's rollout: step, "
              "split, each gate with both figures and sample sizes", "admin",
              _json("RolloutStatus"), (*_ADMIN, 404, 503), auth="admin",
              notes={**_ADMIN_NOTES, 404: "The model has no rollout in the policy.",
                     503: _ROLLOUT_STORE}),
    Operation("POST", "/admin/rollouts/{model}/{action}", "controlRollout", "pause, resume, "
              "promote or abort a model's rollout (`action`); returns the new status", "admin",
              _json("RolloutStatus"), (*_ADMIN, 404, 409, 503), auth="admin",
              notes={**_ADMIN_NOTES, 404: "The model has no rollout, or `action` is not one of "
                     "pause, resume, promote, abort.",
                     409: "The rollout's state does not allow it (resuming a rolled-back one).",
                     503: _ROLLOUT_STORE}),
    # ---- the gateway's own state, as the console shows it (api/admin_status.py)
    Operation("GET", "/admin/deployments", "deploymentStatus", "Every deployment's weight, "
              "health, circuit, in-flight, scraped queue and KV cache, and its last 15 minutes",
              "admin", _json("DeploymentStatus"), _ADMIN, auth="admin", notes=_ADMIN_NOTES),
    Operation("GET", "/admin/limits", "tenantLimits", "Each tenant's limits and budgets "
              "against its current usage", "admin", _json("TenantLimits"), (*_ADMIN, 404),
              auth="admin", params=(Param("tenant", "Only this tenant."),),
              notes={**_ADMIN_NOTES, 404: "The tenant is not in the policy."}),
    Operation("GET", "/admin/policy", "policyStatus", "The policy in force (secrets masked), "
              "when it was loaded, the last reload and the diff against the previous one",
              "admin", _json("PolicyStatus"), _ADMIN, auth="admin", notes=_ADMIN_NOTES),
    # ---- operations (api/health.py)
    Operation("GET", "/health", "health", "Liveness", "operations", _json("Health"), (),
              auth="none"),
    Operation("GET", "/ready", "ready", "Readiness: keys loaded and a deployment can serve",
              "operations", _json("Readiness"), (503,), auth="none",
              notes={503: "Not ready (body says why) or draining for shutdown."}),
    Operation("GET", "/metrics", "metrics", "Prometheus metrics", "operations",
              {"text/plain": {"type": "string"}}, (404,), auth="none",
              notes={404: "Metrics are disabled (`observability.metrics: false`)."}),
    Operation("GET", "/openapi.json", "openapi", "This document", "operations",
              {"application/json": {"type": "object"}}, (), auth="none"),
)

_SECURITY_SCHEMES: dict[str, Schema] = {
    "ApiKey": {"type": "http", "scheme": "bearer",
               "description": "A tenant's key: `Authorization: Bearer KEY`. Needed once the "
                              "policy declares tenants."},
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                     "description": "The same key as `x-api-key` (Anthropic's SDKs send it)."},
    "AdminKey": {"type": "http", "scheme": "bearer",
                 "description": "`server.admin_key`: `Authorization: Bearer ADMIN_KEY`."},
    "AdminKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                       "description": "`server.admin_key` as `x-api-key`."},
}
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "key": [{"ApiKey": []}, {"ApiKeyHeader": []}],
    "admin": [{"AdminKey": []}, {"AdminKeyHeader": []}],
    "none": [],
}
_HEADERS: dict[str, Schema] = {
    "x-request-id": {"description": "The client's own x-request-id, else a new one.",
                     "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "string"}},
}
_PATH_PARAM = re.compile(r"{(\w+)}")


def _request_bodies() -> dict[str, Schema]:
    """JSON Schema of every bodies.py model an operation takes, with their nested models."""
    models = sorted({op.body for op in OPERATIONS if isinstance(op.body, type)},
                    key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in models],
                                ref_template="#/components/schemas/{model}")
    return dict(top.get("$defs", {}))


def _error_schema(op: Operation, status: int) -> Schema:
    if not op.anthropic or status in _CONNECTION_STATUSES:
        return ref("Error")
    if status == 503:  # the connection cap answers before the route, in OpenAI's shape
        return {"anyOf": [ref("AnthropicError"), ref("Error")]}
    return ref("AnthropicError")


def _responses(op: Operation) -> dict[str, Schema]:
    ok: Schema = {"description": op.summary,
                  "content": {media: {"schema": s} for media, s in op.ok.items()}}
    if op.auth == "key" and op.body is not None:
        ok["headers"] = {"x-request-id": {"$ref": "#/components/headers/x-request-id"}}
    out: dict[str, Schema] = {str(op.status): ok}
    for status in op.errors:
        text = op.notes.get(status) or STATUS_TEXT[status]
        entry: Schema = {"description": text,
                         "content": {"application/json": {"schema": _error_schema(op, status)}}}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
        out[str(status)] = entry
    return out


def _operation(op: Operation, op_id: str) -> Schema:
    out: Schema = {"operationId": op_id, "summary": op.summary, "tags": [op.tag],
                   "security": _SECURITY[op.auth], "responses": _responses(op)}
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
              for n in _PATH_PARAM.findall(op.path)]
    params += [{"name": p.name, "in": "query", "required": False, "description": p.description,
                "schema": p.schema} for p in op.params]
    if params:
        out["parameters"] = params
    if op.body is not None:
        name = op.body if isinstance(op.body, str) else op.body.__name__
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": ref(name)}}}
    return out


def _version() -> str:
    try:
        return version("model-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def build_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Schema]] = {}
    for op in OPERATIONS:
        for i, path in enumerate((op.path, *op.aliases)):
            # An alias is its own operation to OpenAPI: ids must be unique.
            op_id = op.id if i == 0 else f"{op.id}Alias{i}"
            paths.setdefault(path, {})[op.method.lower()] = _operation(op, op_id)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Model Gateway", "version": _version(),
                 "description": "An OpenAI-compatible (and Anthropic Messages) gateway: "
                                "tenants, limits, budgets and routing in front of many "
                                "backends. Unknown body keys pass through to the backend."},
        "paths": paths,
        "components": {"schemas": {**_request_bodies(), **RESPONSES},
                       "securitySchemes": _SECURITY_SCHEMES, "headers": _HEADERS},
    }


def routes() -> list[Route]:
    body = json.dumps(build_document(), separators=(",", ":")).encode()

    async def openapi(request: Request) -> RawResponse:
        return RawResponse(200, body)

    return [Route("/openapi.json", openapi, methods=["GET"])]
