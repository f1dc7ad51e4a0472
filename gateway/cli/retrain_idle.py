"""Why ``flywheel retrain worker --once`` ran no round: one line per opted-in adapter.

The reasons follow the conditions of :func:`retrain.worker.schedule`, in its order (opted in
and enabled, no round queued or running, news since a failed round, enough new feedback or old
enough), read from the same rows the worker just read; they only explain, the worker decides.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.export import FEEDBACK_COMPLETION
from gateway.core.db.models import Adapter, Completion, Feedback, Tenant, TrainingRound
from gateway.core.db.session import Database
from retrain.worker import ACTIVE

NOBODY_OPTED_IN = (
    "no tenant has opted into retraining: `flywheel tenants update NAME --retrain` lets the "
    "worker run rounds for NAME's adapters"
)


async def idle_reasons(db: Database, now: datetime | None = None) -> list[str]:
    """Why no round is due, per opted-in tenant and adapter (or why none is opted in)."""
    now = now or datetime.now(UTC)
    async with db.session() as session:
        tenants = list(
            await session.scalars(
                select(Tenant).where(Tenant.retrain_enabled.is_(True)).order_by(Tenant.name)
            )
        )
        if not tenants:
            return [NOBODY_OPTED_IN]
        reasons: list[str] = []
        for tenant in tenants:
            if tenant.disabled:
                reasons.append(f"{tenant.name}: the tenant is disabled")
                continue
            adapters = list(
                await session.scalars(
                    select(Adapter).where(Adapter.tenant_id == tenant.id).order_by(Adapter.name)
                )
            )
            if not adapters:
                reasons.append(f"{tenant.name}: opted in, but has no adapter yet")
            for adapter in adapters:
                why = await _adapter_reason(session, tenant, adapter, now)
                reasons.append(f"{tenant.name}/{adapter.name}: {why}")
    return reasons


async def _adapter_reason(
    session: AsyncSession, tenant: Tenant, adapter: Adapter, now: datetime
) -> str:
    latest = await session.scalar(
        select(TrainingRound)
        .where(TrainingRound.adapter_id == adapter.id)
        .order_by(TrainingRound.created_at.desc())
        .limit(1)
    )
    if latest is not None and latest.state in ACTIVE:
        held = f" by {latest.worker_id}" if latest.worker_id else ""
        return f"round {latest.id} is already {latest.state}{held}"
    feedback = (
        select(func.count(), func.min(Feedback.updated_at))
        .select_from(Feedback)
        .join(Completion, FEEDBACK_COMPLETION)
        .where(Feedback.tenant_id == tenant.id, Completion.adapter_id == adapter.id)
    )
    if latest is not None and latest.state == "failed":
        failed_at = latest.finished_at or latest.created_at
        newer, _ = (await session.execute(feedback.where(Feedback.updated_at > failed_at))).one()
        if not newer:
            return (
                f"its last round {latest.id} failed ({latest.error or 'no error recorded'}); "
                "the worker retries once feedback newer than that failure arrives"
            )
    since = await session.scalar(
        select(func.max(TrainingRound.data_cutoff)).where(
            TrainingRound.adapter_id == adapter.id, TrainingRound.state == "succeeded"
        )
    )
    if since is not None:
        feedback = feedback.where(Feedback.updated_at >= since)
    count, oldest = (await session.execute(feedback)).one()
    after = "since its last round" if since is not None else "so far"
    if not count:
        return f"no feedback {after}"
    if oldest.tzinfo is None:  # SQLite gives naive UTC datetimes
        oldest = oldest.replace(tzinfo=UTC)
    age_h = (now - oldest).total_seconds() / 3600
    if count < tenant.retrain_min_feedback and age_h < tenant.retrain_max_age_hours:
        return (
            f"{count} feedback row{'s' if count != 1 else ''} {after}; a round needs "
            f"{tenant.retrain_min_feedback}, or the oldest of them to be "
            f"{tenant.retrain_max_age_hours:g} h old (it is {age_h:.1f} h); "
            f"`flywheel tenants update {tenant.name} --retrain-min-feedback N` lowers the bar"
        )
    return "due: the next poll queues its round"
