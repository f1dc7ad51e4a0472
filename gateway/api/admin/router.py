"""Thin admin routes: an admin token on every one (router-level), bodies and answers typed in
protocol.py, reads in serving.py, writes through the use cases the CLI shares (each audited)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import golden as golden_svc
from adapters.promotion import SwapResult
from feedback.retention import forget_end_user
from gateway.api.admin import serving
from gateway.api.admin.deps import AdminDep, get_admin
from gateway.api.admin.protocol import (
    AdapterAdd,
    AdapterAdded,
    AdapterDetail,
    AdapterVersionOut,
    AuditEventOut,
    FeedbackStats,
    Forget,
    Forgotten,
    GateReportOut,
    GoldenAdd,
    GoldenAdded,
    KeyOut,
    NewKey,
    NextRound,
    PlaygroundKey,
    Promote,
    Rollback,
    RotatedKeys,
    RoundOut,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TenantSettings,
    Verified,
)
from gateway.api.body import CheckedJSONRoute
from gateway.api.deps import StateDep
from gateway.core import tenants as tenant_svc
from gateway.services import adapters as adapter_svc
from retrain.plan import check_recipe


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """A session for one request's reads (the FastAPI template's ``SessionDep``)."""
    async with state.db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
# Writes open their transaction in the handler, so it commits before the answer is sent: a
# 2xx never reports a write that a failed commit then lost.

# Page sizes: a huge or negative limit is a 400 naming it, not an overflow in the driver.
Limit500 = Annotated[int, Query(ge=1, le=500)]

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    route_class=CheckedJSONRoute,
    dependencies=[Depends(get_admin)],  # every route; handlers that audit take it by name too
)


def _check_recipe(changes: dict[str, Any]) -> None:
    """A stored recipe must be one a round can use: refused here, naming the field."""
    if changes.get("retrain_recipe"):
        check_recipe(changes["retrain_recipe"])


@router.get("/tenants")
async def list_tenants(session: SessionDep) -> list[TenantOut]:
    return [TenantOut.model_validate(t) for t in await tenant_svc.list_tenants(session)]


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, admin: AdminDep, state: StateDep) -> TenantCreated:
    """Create a tenant; the response carries its first API key, shown this once."""
    changes = body.changes()
    changes.pop("name")
    _check_recipe(changes)
    async with state.db.transaction() as session:
        tenant = await tenant_svc.create_tenant(session, body.name, by=admin, **changes)
        key, secret = await tenant_svc.create_key(session, tenant, by=admin)
    return TenantCreated(tenant=TenantOut.model_validate(tenant), key_id=key.id, api_key=secret)


@router.patch("/tenants/{name}")
async def update_tenant(
    name: str, body: TenantSettings, admin: AdminDep, state: StateDep
) -> TenantOut:
    changes = body.changes()
    _check_recipe(changes)
    async with state.db.transaction() as session:
        tenant = await tenant_svc.update_tenant(session, name, by=admin, **changes)
    state.auth_cache.invalidate()
    return TenantOut.model_validate(tenant)


@router.get("/tenants/{name}/keys")
async def list_keys(name: str, session: SessionDep) -> list[KeyOut]:
    tenant = await tenant_svc.get_tenant(session, name)
    return [KeyOut.model_validate(k) for k in await tenant_svc.list_keys(session, tenant)]


@router.post("/tenants/{name}/keys", status_code=201)
async def create_key(name: str, admin: AdminDep, state: StateDep) -> NewKey:
    async with state.db.transaction() as session:
        tenant = await tenant_svc.get_tenant(session, name)
        key, secret = await tenant_svc.create_key(session, tenant, by=admin)
    return NewKey(**KeyOut.model_validate(key).model_dump(), api_key=secret)


@router.post("/tenants/{name}/keys/rotate")
async def rotate_keys(name: str, admin: AdminDep, state: StateDep) -> RotatedKeys:
    async with state.db.transaction() as session:
        tenant = await tenant_svc.get_tenant(session, name)
        key, secret, revoked = await tenant_svc.rotate_keys(session, tenant, by=admin)
    state.auth_cache.invalidate()
    return RotatedKeys(**KeyOut.model_validate(key).model_dump(), api_key=secret, revoked=revoked)


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, admin: AdminDep, state: StateDep) -> KeyOut:
    async with state.db.transaction() as session:
        key = await tenant_svc.revoke_key(session, key_id, by=admin)
    state.auth_cache.invalidate()
    return KeyOut.model_validate(key)


@router.post("/tenants/{name}/playground-key", status_code=201)
async def playground_key(name: str, admin: AdminDep, state: StateDep) -> PlaygroundKey:
    """A tenant key for one reply in the console's playground (the OpenAI API as the tenant):
    shown once, revoked by the console when the reply has streamed, or by a later issue once
    expired.  The tenant's existing keys are neither shown nor changed."""
    async with state.db.transaction() as session:
        issued = await serving.playground_key(session, name, admin)
    if issued.revoked_expired:
        state.auth_cache.invalidate()
    return issued


@router.get("/adapters")
async def adapters(session: SessionDep, tenant: str | None = None) -> list[AdapterVersionOut]:
    return await serving.adapter_versions(session, tenant)


@router.get("/adapters/{tenant}/{name}")
async def adapter_detail(
    tenant: str,
    name: str,
    session: SessionDep,
    limit: Limit500 = 20,
    recent_edits: Annotated[int, Query(ge=0, le=100)] = 10,
) -> AdapterDetail:
    """One adapter: its versions as a lineage (each with the round that produced it and the gate
    report that judged it), its rounds, its gate reports as tables (serving, candidate, rule and
    outcome per metric), its golden sets, and the feedback gathered since the last round."""
    return await serving.adapter_detail(session, tenant, name, limit, recent_edits)


@router.get("/adapters/{tenant}/{name}/next-round")
async def next_round(tenant: str, name: str, state: StateDep) -> NextRound:
    """The next training round's plan as a dry run (data since the last round, method, split,
    golden set), or why no round could start now; nothing is trained or written."""
    return await serving.next_round(state.db, state.settings, tenant, name)


@router.post("/adapters", status_code=201)
async def add_adapter(body: AdapterAdd, admin: AdminDep, state: StateDep) -> AdapterAdded:
    async with state.db.transaction() as session:
        added = await adapter_svc.add_adapter(
            session,
            state.settings,
            tenant_name=body.tenant,
            name=body.name,
            path=Path(body.path),
            sign=body.sign,
            actor=admin.actor,
            remote_addr=admin.remote_addr,
        )
    return AdapterAdded(
        adapter=body.name,
        version=added.version.version,
        digest=added.version.digest,
        signed=added.signed,
    )


@router.post("/adapters/{tenant}/{name}/versions/{version}/verify")
async def verify(
    tenant: str, name: str, version: int, admin: AdminDep, state: StateDep
) -> Verified:
    row = await adapter_svc.verify_recorded(
        state.db, state.settings, tenant_name=tenant, name=name, version=version, by=admin
    )
    return Verified(adapter=name, version=row.version, verified=True)


@router.post("/adapters/{tenant}/{name}/promote")
async def promote(
    tenant: str, name: str, body: Promote, admin: AdminDep, state: StateDep
) -> SwapResult:
    result = await state.promoter.promote(
        tenant,
        name,
        body.version,
        actor=admin.actor,
        reason=body.reason,
        remote_addr=admin.remote_addr,
    )
    state.route_cache.invalidate()
    state.models_cache.invalidate()
    return result


@router.post("/adapters/{tenant}/{name}/rollback")
async def rollback(
    tenant: str, name: str, body: Rollback, admin: AdminDep, state: StateDep
) -> SwapResult:
    result = await state.promoter.rollback(
        tenant, name, actor=admin.actor, reason=body.reason, remote_addr=admin.remote_addr
    )
    state.route_cache.invalidate()
    state.models_cache.invalidate()
    return result


@router.post("/golden", status_code=201)
async def add_golden(body: GoldenAdd, admin: AdminDep, state: StateDep) -> GoldenAdded:
    items = [golden_svc.validate_item(item, i) for i, item in enumerate(body.items, 1)]
    async with state.db.transaction() as session:
        row = await golden_svc.freeze_golden_set(
            session, body.tenant, body.adapter, items, by=admin
        )
    return GoldenAdded(
        id=row.id, version=row.version, content_hash=row.content_hash, items=len(items)
    )


@router.get("/rounds")
async def rounds(
    session: SessionDep, tenant: str | None = None, limit: Limit500 = 50
) -> list[RoundOut]:
    return [RoundOut.model_validate(r) for r in await serving.rounds(session, tenant, limit)]


@router.get("/gate-reports")
async def gate_reports(
    session: SessionDep, tenant: str | None = None, limit: Limit500 = 50
) -> list[GateReportOut]:
    reports = await serving.gate_reports(session, tenant, limit)
    return [GateReportOut.model_validate(r) for r in reports]


@router.get("/feedback/stats")
async def feedback_stats(session: SessionDep, tenant: str) -> FeedbackStats:
    return await serving.feedback_stats(session, tenant)


@router.get("/audit")
async def audit_log(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[AuditEventOut]:
    return [AuditEventOut.model_validate(e) for e in await serving.audit_events(session, limit)]


@router.post("/feedback/forget")
async def forget(body: Forget, admin: AdminDep, state: StateDep) -> Forgotten:
    """Erase an end user's completions and feedback, including rows still queued in memory."""

    async with state.db.session() as session:
        tenant = await tenant_svc.get_tenant(session, body.tenant)
    deleted = await forget_end_user(
        state.db, tenant.id, body.end_user, log=state.completions, by=admin
    )
    return Forgotten(tenant=body.tenant, end_user=body.end_user, **asdict(deleted))
