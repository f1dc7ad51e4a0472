"""FastAPI dependencies shared by every router (``Annotated`` aliases, as in the FastAPI template)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.core.db.models import ApiKey, Tenant
from gateway.core.errors import AuthenticationError
from gateway.core.ids import hash_secret
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


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "Missing API key: send 'Authorization: Bearer <your Flywheel key>'.",
            code="missing_api_key",
        )
    return token.strip()


async def get_tenant(request: Request, state: StateDep) -> AuthContext:
    from gateway.core.tenants import authenticate

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
