"""The admin API under /admin.  Thin: every action is a call into the shared service layer."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from adapters import golden as golden_svc
from adapters.registry import list_versions
from gateway.api.admin.deps import AdminContext, AdminDep
from gateway.api.admin.protocol import (
    AdapterAdd,
    Forget,
    GoldenAdd,
    Promote,
    Rollback,
    TenantCreate,
    TenantSettings,
)
from gateway.api.body import CheckedJSONRoute
from gateway.api.deps import StateDep
from gateway.core import audit
from gateway.core import tenants as tenant_svc
from gateway.core.db.models import (
    ApiKey,
    AuditEvent,
    Completion,
    Feedback,
    GateReport,
    Tenant,
    TrainingRound,
)
from gateway.core.errors import FlywheelError
from gateway.services import adapters as adapter_svc
from gateway.state import AppState
from retrain.plan import check_recipe

# Page sizes: a huge or negative limit is a 400 naming it, not an overflow in the driver.
Limit500 = Annotated[int, Query(ge=1, le=500)]

router = APIRouter(prefix="/admin", tags=["admin"], route_class=CheckedJSONRoute)


def _tenant(t: Tenant) -> dict[str, Any]:
    return {
        c: getattr(t, c) for c in ("id", "name", "created_at", *sorted(tenant_svc.TENANT_SETTINGS))
    }


def _check_recipe(changes: dict[str, Any]) -> None:
    """A stored recipe must be one a round can use: refused here, naming the field."""
    if changes.get("retrain_recipe"):
        check_recipe(changes["retrain_recipe"])


def _key(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "tenant_id": k.tenant_id,
        "prefix": k.prefix,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    }


async def _audited(
    state: AppState,
    admin: AdminContext,
    action: str,
    target: str,
    tenant_id: str | None = None,
    **detail: Any,
) -> None:
    async with state.db.transaction() as session:
        audit.record_by(session, admin, action, target, tenant_id, detail)


@router.get("/tenants")
async def list_tenants(admin: AdminDep, state: StateDep) -> list[dict[str, Any]]:
    async with state.db.session() as session:
        return [_tenant(t) for t in await tenant_svc.list_tenants(session)]


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    """Create a tenant; the response carries its first API key, shown this once."""
    async with state.db.transaction() as session:
        changes = body.changes()
        changes.pop("name")
        _check_recipe(changes)
        tenant = await tenant_svc.create_tenant(session, body.name, by=admin, **changes)
        key, secret = await tenant_svc.create_key(session, tenant, by=admin)
    return {"tenant": _tenant(tenant), "key_id": key.id, "api_key": secret}


@router.patch("/tenants/{name}")
async def update_tenant(
    name: str, body: TenantSettings, admin: AdminDep, state: StateDep
) -> dict[str, Any]:
    changes = body.changes()
    _check_recipe(changes)
    async with state.db.transaction() as session:
        tenant = await tenant_svc.update_tenant(session, name, by=admin, **changes)
    state.auth_cache.invalidate()
    return _tenant(tenant)


@router.get("/tenants/{name}/keys")
async def list_keys(name: str, admin: AdminDep, state: StateDep) -> list[dict[str, Any]]:
    async with state.db.session() as session:
        return [
            _key(k)
            for k in await tenant_svc.list_keys(session, await tenant_svc.get_tenant(session, name))
        ]


@router.post("/tenants/{name}/keys", status_code=201)
async def create_key(name: str, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    async with state.db.transaction() as session:
        tenant = await tenant_svc.get_tenant(session, name)
        key, secret = await tenant_svc.create_key(session, tenant, by=admin)
    return {**_key(key), "api_key": secret}


@router.post("/tenants/{name}/keys/rotate")
async def rotate_keys(name: str, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    async with state.db.transaction() as session:
        tenant = await tenant_svc.get_tenant(session, name)
        key, secret, revoked = await tenant_svc.rotate_keys(session, tenant, by=admin)
    state.auth_cache.invalidate()
    return {**_key(key), "api_key": secret, "revoked": revoked}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    async with state.db.transaction() as session:
        key = await tenant_svc.revoke_key(session, key_id, by=admin)
    state.auth_cache.invalidate()
    return _key(key)


@router.get("/adapters")
async def adapters(
    admin: AdminDep, state: StateDep, tenant: str | None = None
) -> list[dict[str, Any]]:
    async with state.db.session() as session:
        tenant_id = (await tenant_svc.get_tenant(session, tenant)).id if tenant else None
        return [
            {
                "tenant": t.name,
                "adapter": a.name,
                "version": v.version,
                "version_id": v.id,
                "state": v.state,
                "active": a.active_version_id == v.id,
                "digest": v.digest,
                "rank": v.rank,
                "use_dora": v.use_dora,
                "signed": v.signature_path is not None,
                "parent_version_id": v.parent_version_id,
                "created_at": v.created_at,
            }
            for t, a, v in await list_versions(session, tenant_id)
        ]


@router.post("/adapters", status_code=201)
async def add_adapter(body: AdapterAdd, admin: AdminDep, state: StateDep) -> dict[str, Any]:
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
    return {
        "adapter": body.name,
        "version": added.version.version,
        "digest": added.version.digest,
        "signed": added.signed,
    }


@router.post("/adapters/{tenant}/{name}/versions/{version}/verify")
async def verify(
    tenant: str, name: str, version: int, admin: AdminDep, state: StateDep
) -> dict[str, Any]:
    target = f"{tenant}/{name}@{version}"
    try:
        async with state.db.session() as session:
            row = await adapter_svc.verify_version(
                session, state.settings, tenant_name=tenant, name=name, version=version
            )
    except FlywheelError as exc:
        await _audited(state, admin, "adapter.verify", target, verified=False, error=exc.message)
        raise
    await _audited(state, admin, "adapter.verify", target, row.tenant_id, verified=True)
    return {"adapter": name, "version": row.version, "verified": True}


@router.post("/adapters/{tenant}/{name}/promote")
async def promote(
    tenant: str, name: str, body: Promote, admin: AdminDep, state: StateDep
) -> dict[str, Any]:
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
    return result.as_dict()


@router.post("/adapters/{tenant}/{name}/rollback")
async def rollback(
    tenant: str, name: str, body: Rollback, admin: AdminDep, state: StateDep
) -> dict[str, Any]:
    result = await state.promoter.rollback(
        tenant, name, actor=admin.actor, reason=body.reason, remote_addr=admin.remote_addr
    )
    state.route_cache.invalidate()
    state.models_cache.invalidate()
    return result.as_dict()


@router.post("/golden", status_code=201)
async def add_golden(body: GoldenAdd, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    items = [golden_svc.validate_item(item, i) for i, item in enumerate(body.items, 1)]
    async with state.db.transaction() as session:
        row = await golden_svc.freeze_golden_set(
            session, body.tenant, body.adapter, items, by=admin
        )
    return {
        "id": row.id,
        "version": row.version,
        "content_hash": row.content_hash,
        "items": len(items),
    }


@router.get("/rounds")
async def rounds(
    admin: AdminDep, state: StateDep, tenant: str | None = None, limit: Limit500 = 50
) -> list[dict[str, Any]]:
    async with state.db.session() as session:
        stmt = select(TrainingRound).order_by(TrainingRound.created_at.desc()).limit(limit)
        if tenant:
            stmt = stmt.where(
                TrainingRound.tenant_id == (await tenant_svc.get_tenant(session, tenant)).id
            )
        cols = (
            "id",
            "tenant_id",
            "adapter_id",
            "state",
            "method",
            "method_reason",
            "parent_version_id",
            "candidate_version_id",
            "counts",
            "dataset_hash",
            "hyperparams",
            "metrics",
            "error",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        )
        return [{c: getattr(r, c) for c in cols} for r in await session.scalars(stmt)]


@router.get("/gate-reports")
async def gate_reports(
    admin: AdminDep, state: StateDep, tenant: str | None = None, limit: Limit500 = 50
) -> list[dict[str, Any]]:
    async with state.db.session() as session:
        stmt = select(GateReport).order_by(GateReport.created_at.desc()).limit(limit)
        if tenant:
            stmt = stmt.where(
                GateReport.tenant_id == (await tenant_svc.get_tenant(session, tenant)).id
            )
        cols = (
            "id",
            "tenant_id",
            "adapter_id",
            "candidate_version_id",
            "serving_version_id",
            "golden_set_id",
            "round_id",
            "passed",
            "reasons",
            "report",
            "summary",
            "created_at",
        )
        return [{c: getattr(r, c) for c in cols} for r in await session.scalars(stmt)]


@router.get("/feedback/stats")
async def feedback_stats(admin: AdminDep, state: StateDep, tenant: str) -> dict[str, Any]:
    async with state.db.session() as session:
        t = await tenant_svc.get_tenant(session, tenant)
        by_rating = dict(
            (
                await session.execute(
                    select(Feedback.rating, func.count())
                    .where(Feedback.tenant_id == t.id)
                    .group_by(Feedback.rating)
                )
            ).all()
        )
        edits = await session.scalar(
            select(func.count()).where(
                Feedback.tenant_id == t.id, Feedback.edited_output.is_not(None)
            )
        )
        completions = await session.scalar(
            select(func.count()).select_from(Completion).where(Completion.tenant_id == t.id)
        )
    return {
        "tenant": tenant,
        "completions": completions,
        "edits": edits,
        "up": by_rating.get("up", 0),
        "down": by_rating.get("down", 0),
        "no_rating": by_rating.get(None, 0),
    }


@router.get("/audit")
async def audit_log(
    admin: AdminDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    async with state.db.session() as session:
        rows = await session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
        cols = (
            "id",
            "actor",
            "action",
            "target",
            "tenant_id",
            "remote_addr",
            "detail",
            "created_at",
        )
        return [{c: getattr(r, c) for c in cols} for r in rows]


@router.post("/feedback/forget")
async def forget(body: Forget, admin: AdminDep, state: StateDep) -> dict[str, Any]:
    """Erase an end user's completions and feedback, including rows still queued in memory."""
    from feedback.retention import forget_end_user

    async with state.db.session() as session:
        tenant = await tenant_svc.get_tenant(session, body.tenant)
    deleted = await forget_end_user(
        state.db, tenant.id, body.end_user, log=state.completions, by=admin
    )
    return {"tenant": body.tenant, "end_user": body.end_user, **asdict(deleted)}
