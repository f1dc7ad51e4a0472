"""The OpenAPI document as the routes really behave.

FastAPI derives the schema from signatures, which misses three things here: the completion and
feedback routes read their own bodies (for speed and for CORS-aware errors), so no request body
was declared; every route but the health checks takes a bearer token, which no security scheme
said; and a validation failure is a 400 in OpenAI's error envelope, not FastAPI's 422.  Clients,
generators and fuzzers (tests/e2e/test_fuzz.py) read this document, so it must say what happens.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.api.feedback.protocol import FeedbackBatch, FeedbackItem
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest

PUBLIC = {"/healthz", "/readyz"}  # no credentials
BODIES: dict[tuple[str, str], list[type[BaseModel]]] = {
    ("/v1/chat/completions", "post"): [ChatCompletionRequest],
    ("/v1/completions", "post"): [CompletionRequest],
    ("/v1/feedback", "post"): [FeedbackItem, FeedbackBatch],
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A tenant API key (`fw-...`) on /v1 routes, a browser feedback token "
            "(`fbt....`) on /v1/feedback, an admin token on /admin and /metrics.",
        }
    }
    doc["security"] = [{"bearer": []}]
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if path in PUBLIC:
                operation["security"] = []
            models = BODIES.get((path, method))
            if models is not None:
                operation["requestBody"] = _body(models, schemas)
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = {
                "description": "An error, in OpenAI's envelope (400 names the field in `param`)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return doc


def _body(models: list[type[BaseModel]], schemas: dict[str, Any]) -> dict[str, Any]:
    refs = []
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
    body = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"required": True, "content": {"application/json": {"schema": body}}}
