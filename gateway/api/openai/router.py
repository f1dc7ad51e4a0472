"""Thin routes for /v1/chat/completions, /v1/completions and /v1/models."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.registry import tenant_models
from gateway.api.body import parse_body
from gateway.api.deps import StateDep, TenantDep, authenticate_request
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.openai.serving import OpenAIServing

router = APIRouter(prefix="/v1", tags=["openai"])


# The two completion routes take only the Request and authenticate inline: FastAPI's
# dependency solving was ~0.3 ms per request, a third of the gateway's own time in the
# overhead benchmark (docs/benchmarks.md).  Same checks, same errors, same order.


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state, auth = await authenticate_request(request)
    body = await parse_body(request, ChatCompletionRequest, state.settings.max_body_bytes)
    return await OpenAIServing(state).create("chat", auth, body)


@router.post("/completions")
async def completions(request: Request) -> Response:
    state, auth = await authenticate_request(request)
    body = await parse_body(request, CompletionRequest, state.settings.max_body_bytes)
    return await OpenAIServing(state).create("text", auth, body)


@router.get("/models")
async def list_models(auth: TenantDep, state: StateDep) -> dict[str, Any]:
    """The base model and only this tenant's adapters (each at its active version)."""
    base = state.engine.base_model_name
    data: list[dict[str, Any]] = [
        {
            "id": base,
            "object": "model",
            "created": 0,
            "owned_by": "flywheel",
            "root": base,
            "parent": None,
        }
    ]
    async with state.db.session() as session:
        for adapter, version in await tenant_models(session, auth.tenant.id):
            data.append(
                {
                    "id": adapter.name,
                    "object": "model",
                    "created": int(version.created_at.timestamp())
                    if version.created_at
                    else int(time.time()),
                    "owned_by": auth.tenant.name,
                    "root": f"{adapter.name}@{version.version}",
                    "parent": base,
                }
            )
    return {"object": "list", "data": data}
