"""The response shapes of `/openapi.json`: what the gateway promises to send back.

Request bodies are not here: they are generated from the models the handlers validate with
(`api/bodies.py`). Replies are written as JSON Schema by hand because the gateway never builds
them from a model — most pass through from a backend as bytes — so these declare the keys every
reply has, whichever backend served it, and allow the rest (a backend's extra keys reach the
client untouched). `tests/integration/test_openapi_fuzz.py` checks real replies against them.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NULLABLE_STR: Schema = {"type": ["string", "null"]}
# Money leaves the gateway as a decimal string ("0.021"), never a float (docs/accounting.md).
_MONEY: Schema = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _event(payload: Schema) -> Schema:
    """An OpenAI stream event: `data` is `[DONE]` or JSON matching `payload`."""
    return {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"const": "[DONE]"},
        {"contentMediaType": "application/json", "contentSchema": payload}]}}}


_USAGE = _object(["prompt_tokens", "total_tokens"], prompt_tokens=_INT,
                 completion_tokens=_INT, total_tokens=_INT)
# A rerank reply's usage: vLLM's names OpenAI's counts, older vLLM and Jina only `total_tokens`.
_USAGE_ANY = _object([], prompt_tokens=_INT, total_tokens=_INT)

_NUM_OR_NULL: Schema = {"type": ["number", "null"]}
_GATE = _object(["gate", "verdict", "candidate", "baseline", "candidate_n", "baseline_n", "z"],
                gate={"type": "string", "description": "`ttft_p95.max_ratio`, `error_rate.max`…"},
                verdict={"enum": ["hold", "breach", "wait"]}, candidate=_NUM_OR_NULL,
                baseline=_NUM_OR_NULL, candidate_n=_INT, baseline_n=_INT, z=_NUM_OR_NULL)
_ARM = _object(["deployments", "served", "requests"],
               deployments={"type": "array", "items": _STR}, served=_INT, requests=_INT)
_ROLLOUT = _object(
    ["model", "rollout", "status", "step", "steps", "percent", "reason", "gates"],
    model=_STR, rollout=_STR, status={"enum": ["running", "paused", "promoted", "rolled_back"]},
    step={"type": "integer", "description": "Index of the current step (0-based)."},
    steps=_INT, percent={"type": "number", "description": "Candidate share now, 0..100."},
    step_started={"type": "number"}, step_elapsed_s={"type": "number"},
    step_min_duration_s={"type": "number"}, step_min_requests=_INT, reason=_STR, version=_INT,
    candidate=_ARM, baseline=_ARM,
    gates={"type": "array", "items": _GATE, "description": "Each gate over the current step."},
    last_transition_gates={"type": "array", "items": _GATE,
                           "description": "The verdicts that made the last transition."})

RESPONSES: dict[str, Schema] = {
    # ---- errors: OpenAI's object (every route but /v1/messages), Anthropic's on /v1/messages
    "Error": _object(["error"], error=_object(
        ["message", "type", "param", "code"], message=_STR, type=_STR, param=_NULLABLE_STR,
        code=_NULLABLE_STR)),
    "AnthropicError": _object(["type", "error"], type={"const": "error"}, error=_object(
        ["type", "message"], type=_STR, message=_STR)),
    # ---- OpenAI-compatible replies
    "ChatCompletion": _object(
        ["id", "object", "model", "choices"], id=_STR, object={"const": "chat.completion"},
        created=_INT, model=_STR, usage=_USAGE,
        choices={"type": "array", "items": _object(
            ["index", "message"], index=_INT, finish_reason=_NULLABLE_STR,
            message=_object(["role"], role=_STR, content=_NULLABLE_STR))}),
    "Completion": _object(
        ["id", "object", "model", "choices"], id=_STR, object={"const": "text_completion"},
        created=_INT, model=_STR, usage=_USAGE,
        choices={"type": "array", "items": _object(["index", "text"], index=_INT, text=_STR,
                                                   finish_reason=_NULLABLE_STR)}),
    "EmbeddingList": _object(
        ["object", "data", "model"], object={"const": "list"}, model=_STR, usage=_USAGE,
        data={"type": "array", "items": _object(
            ["object", "embedding", "index"], object={"const": "embedding"}, index=_INT,
            # A list of floats, or base64 text with `encoding_format: base64`.
            embedding={"anyOf": [{"type": "array", "items": {"type": "number"}}, _STR]})}),
    # Cohere's and Jina's rerank reply (vLLM's adds `id`, `model`, `usage`); vLLM's score list.
    "RerankResult": _object(
        ["results"], id=_STR, model=_STR, usage=_USAGE_ANY,
        results={"type": "array", "items": _object(
            ["index", "relevance_score"], index=_INT, relevance_score={"type": "number"},
            document={"type": "object"})}),
    # OpenAI's moderation reply, passed through as the backend sent it.
    "ModerationList": _object(
        ["id", "model", "results"], id=_STR, model=_STR,
        results={"type": "array", "items": _object(
            ["flagged", "categories", "category_scores"], flagged={"type": "boolean"},
            categories={"type": "object", "additionalProperties": {"type": "boolean"}},
            category_scores={"type": "object", "additionalProperties": {"type": "number"}},
            category_applied_input_types={"type": "object"})}),
    "ScoreList": _object(
        ["object", "data"], object={"const": "list"}, model=_STR, usage=_USAGE_ANY,
        data={"type": "array", "items": _object(
            ["index", "score"], index=_INT, score={"type": "number"})}),
    "Model": _object(
        ["id", "object", "created", "owned_by"], id=_STR, object={"const": "model"},
        created=_INT, owned_by=_STR, type=_STR, description=_STR, context_length=_INT,
        pricing={"type": "object", "additionalProperties": _MONEY,
                 "description": "USD per million tokens for this caller, today."}),
    "ModelList": _object(["object", "data"], object={"const": "list"},
                         data={"type": "array", "items": ref("Model")}),
    # ---- streams: Open API 3.1 has a `text/event-stream` schema describe one event; `data`
    # is JSON (a chunk, or the error that ended the stream) or OpenAI's closing `[DONE]`.
    "ChatCompletionChunk": _object(
        ["object", "choices"], id=_STR, object={"const": "chat.completion.chunk"}, model=_STR,
        choices={"type": "array", "items": _object(["index"], index=_INT)},
        usage={"anyOf": [_USAGE, {"type": "null"}]}),
    "CompletionChunk": _object(
        ["object", "choices"], id=_STR, object={"const": "text_completion"}, model=_STR,
        choices={"type": "array", "items": _object(["index"], index=_INT)},
        usage={"anyOf": [_USAGE, {"type": "null"}]}),
    "ChatCompletionEvent": _event({"anyOf": [ref("ChatCompletionChunk"), ref("Error")]}),
    "CompletionEvent": _event({"anyOf": [ref("CompletionChunk"), ref("Error")]}),
    # Anthropic's events: message_start … message_stop, `ping`, or `error`; each names its type.
    "MessageEvent": {"type": "object", "required": ["event", "data"], "properties": {
        "event": _STR, "data": {"contentMediaType": "application/json",
                                "contentSchema": _object(["type"], type=_STR)}}},
    # ---- Anthropic Messages reply
    "Message": _object(
        ["id", "type", "role", "content", "model", "usage"], id=_STR, type={"const": "message"},
        role={"const": "assistant"}, model=_STR, stop_reason=_NULLABLE_STR,
        content={"type": "array", "items": _object(["type"], type=_STR)},
        usage=_object(["input_tokens", "output_tokens"], input_tokens=_INT,
                      output_tokens=_INT)),
    # ---- OpenAI Responses: the object, its typed stream events, the stored-response routes
    "Response": _object(
        ["id", "object", "created_at", "status", "model", "output"], id=_STR,
        object={"const": "response"}, created_at=_INT, status=_STR, model=_STR,
        output={"type": "array", "items": _object(["type"], type=_STR)},
        usage=_object(["input_tokens", "output_tokens", "total_tokens"], input_tokens=_INT,
                      output_tokens=_INT, total_tokens=_INT)),
    # Each event names its type twice (`event:` and `type`) and carries a sequence number.
    "ResponseEvent": {"type": "object", "required": ["event", "data"], "properties": {
        "event": _STR, "data": {"contentMediaType": "application/json",
                                "contentSchema": _object(["type", "sequence_number"], type=_STR,
                                                         sequence_number=_INT)}}},
    "DeletedResponse": _object(["id", "object", "deleted"], id=_STR,
                               object={"const": "response"}, deleted={"const": True}),
    "InputItemList": _object(
        ["object", "data", "has_more"], object={"const": "list"}, has_more={"type": "boolean"},
        data={"type": "array", "items": _object(["type"], type=_STR)},
        first_id=_NULLABLE_STR, last_id=_NULLABLE_STR),
    # ---- token counts (x-gateway-token-count: provider | estimated)
    "MessageTokensCount": _object(["input_tokens"], input_tokens=_INT),
    "ResponseInputTokens": _object(["object", "input_tokens"],
                                   object={"const": "response.input_tokens"},
                                   input_tokens=_INT),
    # ---- health
    "Health": _object(["status"], status={"const": "ok"}),
    "Readiness": _object(
        ["status"], status={"enum": ["ready", "not_ready", "draining"]},
        keys_loaded={"type": "boolean"},
        deployments={"type": "object", "additionalProperties": {
            "enum": ["ok", "cooldown", "unhealthy", "disabled"]},
            "description": "Each deployment's state, by deployment id."}),
    # ---- admin
    "Key": _object(
        ["id", "tenant", "source"], id=_STR, tenant=_STR, name=_NULLABLE_STR,
        hint=_NULLABLE_STR, source={"enum": ["policy", "store"]},
        created_at=_NULLABLE_STR, expires_at=_NULLABLE_STR, revoked_at=_NULLABLE_STR),
    "IssuedKey": {"allOf": [ref("Key"), _object(
        ["key"], key={"type": "string", "description": "The plaintext key, shown only once."})]},
    "KeyList": _object(["data"], data={"type": "array", "items": ref("Key")}),
    "CreateKey": {
        "type": "object", "required": ["tenant"],
        "properties": {
            "tenant": {"type": "string", "description": "A tenant declared in the policy."},
            "name": {"type": ["string", "null"], "description": "A label for the key."},
            "expires": {"anyOf": [{"type": "string", "format": "date"},
                                  {"type": "string", "format": "date-time"}, {"type": "null"}],
                        "description": "When the key stops working: a date (2026-03-31, "
                                       "usable through that UTC day) or a datetime "
                                       "(2026-03-31T18:00:00Z)."}}},
    "UsageReport": _object(
        ["from", "to", "group_by", "rows", "totals"], tenant=_NULLABLE_STR,
        group_by={"type": "array", "items": _STR},
        rows={"type": "array", "items": {"type": "object"}},
        totals={"type": "object", "properties": {"cost_usd": _MONEY, "saved_usd": _MONEY,
                                                  "cache_hits": _INT}},
        gpu_allocation={"type": "array", "items": {"type": "object"}},
        cache_savings={"type": "array", "description": "Per tenant: response-cache hits and "
                       "the cost they saved (docs/stages.md).", "items": _object(
                           ["tenant", "cache_hits", "saved_usd"], tenant=_STR, cache_hits=_INT,
                           saved_usd=_MONEY)},
        **{"from": {"type": "string", "format": "date"},
           "to": {"type": "string", "format": "date"}}),
    "RequestList": _object(
        ["from", "to", "filters", "limit", "has_more", "data"], filters={"type": "object"},
        limit=_INT, has_more={"type": "boolean", "description": "More requests match than "
                              "`limit`: these are the newest."},
        next_cursor={"type": ["string", "null"], "description": "Pass as `before` for the "
                     "next (older) page; null on the last one."},
        data={"type": "array", "items": _object(
            ["request_id", "client_request_id", "ts", "tenant", "model", "status", "cost_usd",
             "attempts"],
            request_id={"type": "string", "description": "The gateway's id (the ledger's key, "
                        "`x-gateway-request-id`)."},
            client_request_id={"type": ["string", "null"], "description": "The client's "
                               "`x-request-id`; not unique."},
            ts=_STR, tenant=_STR, key_id=_STR, model=_STR, status=_INT, cost_usd=_MONEY,
            total_tokens=_INT, deployment=_NULLABLE_STR,
            attempts={"type": "array", "items": _object(
                ["deployment", "outcome", "status", "cost_usd"], deployment=_STR,
                outcome=_STR, status={"type": ["integer", "null"]},
                duration_ms={"type": "number"}, cost_usd=_MONEY)})},
        **{"from": {"type": "string", "format": "date"},
           "to": {"type": "string", "format": "date"}}),
    "BudgetStatus": _object(
        ["tenant", "budget"], tenant=_STR,
        budget={"type": "array", "items": _object(
            ["period", "limit_usd", "spent_usd", "reserved_usd", "remaining_usd", "resets_at"],
            period={"enum": ["month", "day"]}, period_id=_STR, limit_usd=_MONEY,
            spent_usd=_MONEY, reserved_usd=_MONEY, remaining_usd=_MONEY, resets_at=_STR)}),
    # ---- the gateway's own state (api/admin_status.py, docs/console.md)
    "DeploymentStatus": _object(
        ["generated_at", "models"], generated_at=_STR,
        models={"type": "array", "items": _object(
            ["model", "strategy", "deployments"], model=_STR, strategy=_STR,
            deployments={"type": "array", "items": _object(
                ["id", "provider", "weight", "health", "circuit", "in_flight"],
                id=_STR, provider=_STR, upstream_model=_STR, weight={"type": "number"},
                health={"enum": ["healthy", "unhealthy"]},
                circuit={"enum": ["open", "closed"], "description": "Open: cooling down "
                         "after failures (`cooldown_s` left); this replica's breaker."},
                cooldown_s={"type": "number"}, in_flight=_INT,
                queue_waiting={"type": ["integer", "null"], "description": "The backend's "
                               "`vllm:num_requests_waiting` from its last fresh scrape."},
                queue_running={"type": ["integer", "null"]},
                kv_cache_usage={"type": ["number", "null"], "description": "0..1, scraped."},
                window_s={"type": "number", "description": "The traffic window (900 s)."},
                attempts=_INT, requests_per_s={"type": "number"},
                error_rate={"type": ["number", "null"]},
                ttft_p50_ms={"type": ["number", "null"]},
                ttft_p95_ms={"type": ["number", "null"]})})}),
    "TenantLimits": _object(
        ["generated_at", "tenants"], generated_at=_STR,
        tenants={"type": "array", "items": _object(
            ["tenant", "limits", "budget_status", "last_minute"], tenant=_STR,
            limits={"type": "object"}, key_limits={"type": ["object", "null"]},
            model_limits={"type": "object"}, budget={"type": ["object", "null"]},
            budget_status={"type": "array", "items": _object(
                ["period", "limit_usd", "spent_usd", "reserved_usd"], period=_STR,
                limit_usd=_MONEY, spent_usd=_MONEY, reserved_usd=_MONEY,
                used={"type": ["number", "null"]}, resets_at=_STR)},
            last_minute=_object(["requests", "tokens"], requests=_INT, tokens=_INT))}),
    "PolicyStatus": _object(
        ["loaded_at", "policy", "diff", "last_reload"], path=_NULLABLE_STR, loaded_at=_STR,
        warnings={"type": "array", "items": _STR},
        last_reload={"anyOf": [{"type": "null"}, _object(
            ["at", "result", "messages"], at=_STR,
            result={"enum": ["ok", "rejected", "refused", "failed"]},
            messages={"type": "array", "items": _STR})]},
        policy={"type": "string", "description": "YAML, defaults filled in, secrets `***`."},
        diff={"type": "string", "description": "Unified diff from the previous version."}),
    # ---- alert webhooks (gateway/alerts, docs/alerts.md)
    "AlertDeliveryList": _object(
        ["object", "data", "pending", "dropped"], object={"const": "list"},
        pending={"type": "integer", "description": "Deliveries queued, in flight or waiting "
                 "to retry on this replica."},
        dropped={"type": "integer", "description": "Deliveries dropped since start: the queue "
                 "(`alerts.queue_size`) was full."},
        data={"type": "array", "description": "Newest first; this replica's last "
              "`alerts.log_size` deliveries.", "items": _object(
                  ["id", "event_id", "event", "webhook", "host", "status", "attempts"],
                  id=_STR, event_id={"type": "string", "description": "The event's id, sent "
                                     "as `X-Gateway-Delivery` (the same on every retry)."},
                  event={"enum": ["budget_threshold", "budget_exhausted", "circuit_open",
                                  "rollout"]},
                  tenant=_NULLABLE_STR, webhook=_STR, kind={"enum": ["json", "slack"]},
                  host={"type": "string", "description": "The webhook URL's host (never its "
                        "path, which may be a secret)."},
                  status={"enum": ["pending", "retrying", "delivered", "failed", "dropped",
                                   "abandoned"]},
                  attempts=_INT, response_status={"type": ["integer", "null"]},
                  last_error=_NULLABLE_STR, created_at=_STR,
                  last_attempt_at=_NULLABLE_STR, next_attempt_at=_NULLABLE_STR,
                  finished_at=_NULLABLE_STR)}),
    # ---- rollouts (gateway/rollouts, docs/rollouts.md)
    "RolloutStatus": _ROLLOUT,
    "RolloutList": _object(["object", "data"], object={"const": "list"},
                           data={"type": "array", "items": ref("RolloutStatus")}),
}
