"""Thin routes for /v1/chat/completions, /v1/completions, /v1/responses and /v1/models."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from adapters.registry import tenant_models
from gateway.api.body import M, parse_body
from gateway.api.deps import AuthContext, StateDep, TenantDep, authenticate_request
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.openai.responses import ModelCard, ModelList, adapter_model_card, base_model_card
from gateway.api.openai.responses_api.protocol import ResponsesRequest
from gateway.api.openai.responses_api.serving import ResponsesServing
from gateway.api.openai.serving import OpenAIServing, client_gone
from gateway.core.db.models import Adapter, AdapterVersion
from gateway.core.errors import FlywheelError


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns a Response, called as it is.

    The completion endpoints authenticate inline and read their own body, so FastAPI's
    request handler (dependency solving, then response handling) has nothing to do for them;
    with it (and with ``Depends`` for the key) it was ~0.3 ms of the gateway's own time per
    request in the overhead benchmark.  ``get_route_handler`` is FastAPI's documented hook for
    this ("Custom Request and APIRoute class"); the routes stay in the OpenAPI schema.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


router = APIRouter(prefix="/v1", tags=["openai"])
completions_router = APIRouter(prefix="/v1", tags=["openai"], route_class=DirectRoute)


@completions_router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state, auth = await authenticate_request(request)
    serving = OpenAIServing(state)
    body = await _parse(request, serving, auth, ChatCompletionRequest)
    return await serving.create("chat", auth, body, client_gone(request))


@completions_router.post("/completions")
async def completions(request: Request) -> Response:
    state, auth = await authenticate_request(request)
    serving = OpenAIServing(state)
    body = await _parse(request, serving, auth, CompletionRequest)
    return await serving.create("text", auth, body, client_gone(request))


@completions_router.post("/responses")
async def responses(request: Request) -> Response:
    """OpenAI's Responses API, run as a chat completion (responses_api/)."""
    state, auth = await authenticate_request(request)
    serving = OpenAIServing(state)
    body = await _parse(request, serving, auth, ResponsesRequest)
    return await ResponsesServing(serving).create(auth, body, client_gone(request))


async def _parse(request: Request, serving: OpenAIServing, auth: AuthContext, model: type[M]) -> M:
    """The body, validated; a refused one (400, 413) is charged to the tenant's limit."""
    try:
        return await parse_body(request, model, serving.state.settings.max_body_bytes)
    except FlywheelError:
        await serving.charge_refused(auth)
        raise


@router.get("/models", response_model_exclude_unset=True)
async def list_models(auth: TenantDep, state: StateDep) -> ModelList:
    """The base model and only this tenant's adapters (each at its active version)."""
    base = state.engine.base_model_name

    async def load() -> list[tuple[Adapter, AdapterVersion]]:
        async with state.db.session() as session:
            return await tenant_models(session, auth.tenant.id)

    adapters = [
        adapter_model_card(adapter.name, adapter.name, version, auth.tenant.name, base)
        for adapter, version in await state.models_cache.get(auth.tenant.id, load)
    ]
    return ModelList(object="list", data=[base_model_card(base), *adapters])


@router.get("/models/{model_id:path}", response_model_exclude_unset=True)
async def retrieve_model(model_id: str, auth: TenantDep, state: StateDep) -> ModelCard:
    """One model, resolved within this tenant: another tenant's adapter is a 404."""
    return await OpenAIServing(state).retrieve_model(auth, model_id)
