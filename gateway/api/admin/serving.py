"""The admin API's reads: what the routes list and count, one query each.

Writes go through the use-case functions the CLI calls too (gateway/core/tenants.py,
gateway/services/adapters.py, adapters.golden.freeze_golden_set, adapters.promotion,
feedback.retention.forget_end_user), each writing its own audit row.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.registry import list_versions
from gateway.api.admin.protocol import AdapterVersionOut, FeedbackStats
from gateway.core.db.models import AuditEvent, Completion, Feedback, GateReport, TrainingRound
from gateway.core.tenants import get_tenant


async def tenant_id_of(session: AsyncSession, tenant: str | None) -> str | None:
    return (await get_tenant(session, tenant)).id if tenant else None


async def adapter_versions(session: AsyncSession, tenant: str | None) -> list[AdapterVersionOut]:
    return [
        AdapterVersionOut(
            tenant=t.name,
            adapter=a.name,
            version=v.version,
            version_id=v.id,
            state=v.state,
            active=a.active_version_id == v.id,
            digest=v.digest,
            rank=v.rank,
            use_dora=v.use_dora,
            signed=v.signature_path is not None,
            parent_version_id=v.parent_version_id,
            created_at=v.created_at,
        )
        for t, a, v in await list_versions(session, await tenant_id_of(session, tenant))
    ]


async def rounds(session: AsyncSession, tenant: str | None, limit: int) -> Sequence[TrainingRound]:
    stmt = select(TrainingRound).order_by(TrainingRound.created_at.desc()).limit(limit)
    if tenant:
        stmt = stmt.where(TrainingRound.tenant_id == await tenant_id_of(session, tenant))
    return (await session.scalars(stmt)).all()


async def gate_reports(
    session: AsyncSession, tenant: str | None, limit: int
) -> Sequence[GateReport]:
    stmt = select(GateReport).order_by(GateReport.created_at.desc()).limit(limit)
    if tenant:
        stmt = stmt.where(GateReport.tenant_id == await tenant_id_of(session, tenant))
    return (await session.scalars(stmt)).all()


async def feedback_stats(session: AsyncSession, tenant: str) -> FeedbackStats:
    tid = (await get_tenant(session, tenant)).id
    by_rating = dict(
        (
            await session.execute(
                select(Feedback.rating, func.count())
                .where(Feedback.tenant_id == tid)
                .group_by(Feedback.rating)
            )
        ).all()
    )
    edits = await session.scalar(
        select(func.count()).where(Feedback.tenant_id == tid, Feedback.edited_output.is_not(None))
    )
    completions = await session.scalar(
        select(func.count()).select_from(Completion).where(Completion.tenant_id == tid)
    )
    return FeedbackStats(
        tenant=tenant,
        completions=completions or 0,
        edits=edits or 0,
        up=by_rating.get("up", 0),
        down=by_rating.get("down", 0),
        no_rating=by_rating.get(None, 0),
    )


async def audit_events(session: AsyncSession, limit: int) -> Sequence[AuditEvent]:
    return (
        await session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    ).all()
