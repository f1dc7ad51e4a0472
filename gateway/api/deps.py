"""FastAPI dependencies shared by every router (``Annotated`` aliases, as in the FastAPI template)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.core.db.models import ApiKey, Tenant
from gateway.core.errors import AuthenticationError
from gateway.core.ids import hash_secret
from gateway.core.tenants import authenticate
from gateway.state import AppState


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    # hop per request that was ~10% of the gateway's own time in the overhead benchmark.
    state: AppState = request.app.state.flywheel
    return state


StateDep = Annotated[AppState, Depends(get_state)]


@dataclass(frozen=True)
class AuthContext:
    tenant: Tenant
    key_id: str


@dataclass(frozen=True)
class Credential:
    """What a surface takes as its bearer token, named in the 401 that asks for it."""

    message: str
    code: str


API_KEY = Credential(
    "Missing API key: send 'Authorization: Bearer <your Flywheel key>'.", "missing_api_key"
)
ADMIN_TOKEN = Credential(
    "Missing admin token: send 'Authorization: Bearer <admin token>', an admin token and not a "
    "tenant's API key (`flywheel admin token-create` makes one; in development the gateway's "
    "start-up log says where its own is).",
    "missing_admin_token",
)
METRICS_TOKEN = Credential(
    "Missing metrics token: send 'Authorization: Bearer <metrics token>' "
    "(FLYWHEEL_METRICS_TOKEN) or an admin token.",
    "missing_metrics_token",
)
FEEDBACK_CREDENTIAL = Credential(
    "Missing API key: send 'Authorization: Bearer <your Flywheel key>', or from a browser the "
    "feedback token of the completion (the x-flywheel-feedback-token header).",
    "missing_api_key",
)


def bearer_token(request: Request, wants: Credential = API_KEY) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(wants.message, code=wants.code)
    return token.strip()


async def get_tenant(request: Request, state: StateDep) -> AuthContext:

    token = bearer_token(request)

    async def load() -> tuple[Tenant, ApiKey]:
        async with state.db.session() as session:
            return await authenticate(session, token)

    tenant, key = await state.auth_cache.get(hash_secret(token), load)
    request.state.tenant_id = tenant.id
    return AuthContext(tenant=tenant, key_id=key.id)


TenantDep = Annotated[AuthContext, Depends(get_tenant)]


async def authenticate_request(request: Request) -> tuple[AppState, AuthContext]:
    """``StateDep`` and ``TenantDep`` without FastAPI's dependency machinery, for hot routes."""
    state = await get_state(request)
    return state, await get_tenant(request, state)
