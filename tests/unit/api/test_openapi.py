"""`/openapi.json`: a valid OpenAPI 3.1 document that names every route the app mounts and
whose request bodies are the models the handlers validate with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from starlette.routing import Route

from gateway.api.bodies import ChatRequest, CompletionRequest, EmbeddingRequest, MessagesRequest
from gateway.api.openapi import OPERATIONS, build_document
from gateway.app import build_app
from gateway.policy.load import parse_policy

DOC = build_document()
METHODS = {"get", "post", "delete", "put", "patch"}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), path): op for path, item in doc["paths"].items()
            for m, op in item.items() if m in METHODS}


def test_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(DOC)
    schema.validate()  # raises on anything the OpenAPI 3.1 meta-schema refuses
    assert DOC["openapi"] == "3.1.0"


def test_every_mounted_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    policy = parse_policy(yaml.safe_dump({
        "providers": {"up": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": [{"provider": "up", "model": "x"}]}},
        "ledger": {"url": f"sqlite:///{tmp_path}/ledger.db"}}), "policy.yaml", {})
    mounted = {(m, re.sub(r"{(\w+):\w+}", r"{\1}", r.path))
               for r in build_app(policy).routes if isinstance(r, Route)
               for m in r.methods or () if m != "HEAD"}
    documented = set(operations(DOC))
    # A route added without a row in gateway/api/openapi.py's OPERATIONS fails here.
    assert mounted - documented == set(), "add these routes to OPERATIONS"
    assert documented - mounted == set(), "these documented routes are not mounted"


@pytest.mark.parametrize("model", [ChatRequest, CompletionRequest, EmbeddingRequest,
                                   MessagesRequest])
def test_request_bodies_are_the_validation_models(model: Any) -> None:
    expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = expected.pop("$defs", {})
    components = DOC["components"]["schemas"]
    assert components[model.__name__] == expected
    for name, schema in nested.items():
        assert components[name] == schema


def test_every_operation_id_is_unique_and_every_status_described() -> None:
    ops = operations(DOC)
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))
    for key, op in ops.items():
        for status, resp in op["responses"].items():
            assert resp["description"], (key, status)


def test_auth_and_its_errors_are_documented() -> None:
    ops = operations(DOC)
    for row in OPERATIONS:
        op = ops[(row.method, row.path)]
        names = {n for req in op["security"] for n in req}
        if row.auth == "admin":
            assert names == {"AdminKey", "AdminKeyHeader"} and {"401", "403"} <= set(
                op["responses"]), row.path
        elif row.auth == "key":
            assert names == {"ApiKey", "ApiKeyHeader"} and "401" in op["responses"], row.path
        else:
            assert op["security"] == [], row.path


def test_messages_errors_are_anthropic_shaped_except_the_connection_layers() -> None:
    responses = operations(DOC)[("POST", "/v1/messages")]["responses"]
    shape = {s: r["content"]["application/json"]["schema"] for s, r in responses.items()
             if s != "200"}
    assert shape["400"] == {"$ref": "#/components/schemas/AnthropicError"}
    assert shape["408"] == {"$ref": "#/components/schemas/Error"}  # gateway/connection.py
    chat = operations(DOC)[("POST", "/v1/chat/completions")]["responses"]
    assert chat["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert "text/event-stream" in chat["200"]["content"]
