"""Admin authentication: an admin token, never a tenant key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.deps import ADMIN_TOKEN, StateDep, bearer_token
from gateway.core.admin_tokens import check_admin_token
from gateway.core.audit import Actor

AdminContext = Actor  # the admin token's actor and the client's address, for the audit table


async def get_admin(request: Request, state: StateDep) -> AdminContext:
    token = bearer_token(request, ADMIN_TOKEN)
    async with state.db.session() as session:
        actor = await check_admin_token(session, state.settings, token)
    client = request.client
    return AdminContext(actor=actor, remote_addr=client.host if client else None)


AdminDep = Annotated[AdminContext, Depends(get_admin)]
