"""Retention (per-tenant ``retention_days``) and erasure of one end user's data.

Deletes run in bounded batches: select up to ``batch_size`` primary keys through an index
(ix_completions_tenant_created, ix_feedback_tenant_updated, ..._tenant_user,
..._tenant_completion), delete exactly those, commit, repeat.  One giant ``DELETE ... WHERE
created_at < cutoff`` would hold its locks and a single snapshot for as long as it runs, write
its whole WAL at once (replicas lag, vacuum cannot clean behind it) and, on SQLite, hold the
one write lock so the completion log could not write for the duration.  Short transactions let
the log writer interleave.

On PostgreSQL at scale the alternative is to partition ``completions`` by ``created_at``
(monthly) and drop whole partitions past the longest retention; per-tenant retention shorter
than that would still need these batched deletes, so they stay the general mechanism.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, select

from feedback.export import trl_prompt
from gateway.core import audit
from gateway.core.audit import Actor
from gateway.core.db.models import Completion, Erasure, Feedback, Tenant, TrainingRound
from gateway.core.db.session import Database
from gateway.core.time import as_utc

if TYPE_CHECKING:
    from feedback.log import CompletionLog


@dataclass
class Deleted:
    completions: int = 0
    feedback: int = 0
    heldout_rows: int = 0  # copies a training round kept of erased data
    rejected_rows: int = 0  # rows in this process's spool quarantine (rejected.jsonl)

    def add(self, other: Deleted) -> None:
        self.completions += other.completions
        self.feedback += other.feedback


async def enforce(db: Database, now: datetime | None = None, batch_size: int = 5000) -> Deleted:
    """Delete completions and feedback older than each tenant's ``retention_days``."""
    now = as_utc(now) if now is not None else datetime.now(UTC)
    async with db.session() as session:
        tenants = (
            await session.execute(
                select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))
            )
        ).all()
    total = Deleted()
    for tenant_id, days in tenants:
        if days is None:  # filtered above; narrows the type
            continue
        cutoff = now - timedelta(days=days)
        total.add(
            await _delete_completions(
                db,
                (Completion.tenant_id == tenant_id) & (Completion.created_at < cutoff),
                tenant_id,
                batch_size,
            )
        )
        total.feedback += await _delete_feedback(
            db, Feedback.updated_at < cutoff, tenant_id, batch_size
        )
    return total


async def forget_end_user(
    db: Database,
    tenant_id: str,
    end_user: str,
    *,
    log: CompletionLog | None = None,
    batch_size: int = 5000,
    by: Actor | None = None,
) -> Deleted:
    """Erase one end user: their completions, their feedback, and any feedback on their
    completions.  The erasure is recorded first: rows of theirs made before it that are still
    queued or spooled in any gateway are dropped when they reach the database, never written.
    Pass the running ``log`` to push this process's queue through now, and ``by`` (the admin
    API's caller, or the CLI's operator) for the audit row every erasure gets."""
    async with db.transaction() as session:
        session.add(Erasure(tenant_id=tenant_id, end_user=end_user, erased_at=datetime.now(UTC)))
    if log is not None:
        await log.flush()
    theirs = (Completion.tenant_id == tenant_id) & (Completion.end_user == end_user)
    async with db.session() as session:
        prompts = {
            _canonical(trl_prompt(kind, request))
            for kind, request in await session.execute(
                select(Completion.kind, Completion.request).where(
                    theirs, Completion.request.is_not(None)
                )
            )
        }
    deleted = await _delete_completions(db, theirs, tenant_id, batch_size)
    deleted.feedback += await _delete_feedback(
        db, Feedback.end_user == end_user, tenant_id, batch_size
    )
    deleted.heldout_rows = await _scrub_rounds(db, tenant_id, prompts)
    if log is not None:  # other processes scrub theirs on their own schedule
        deleted.rejected_rows = await log.scrub_rejected()
    async with db.transaction() as session:
        audit.record_by(session, by, "feedback.forget", end_user, tenant_id, asdict(deleted))
    return deleted


def _canonical(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


async def _scrub_rounds(db: Database, tenant_id: str, prompts: set[str]) -> int:
    """Drop the held-out rows rounds stored for the gate that came from erased completions
    (matched by prompt, so a row with the very same prompt from someone else goes too)."""
    if not prompts:
        return 0
    removed = 0
    async with db.transaction() as session:
        for row in await session.scalars(
            select(TrainingRound).where(TrainingRound.tenant_id == tenant_id)
        ):
            kept = [h for h in row.heldout if _canonical(h.get("prompt")) not in prompts]
            if len(kept) != len(row.heldout):
                removed += len(row.heldout) - len(kept)
                row.heldout = kept
    return removed


async def _delete_completions(
    db: Database, where: ColumnElement[bool], tenant_id: str, batch_size: int
) -> Deleted:
    """Completions matching ``where``, with the feedback on them, a batch per transaction."""
    deleted = Deleted()
    while True:
        async with db.transaction() as session:
            ids = list(await session.scalars(select(Completion.id).where(where).limit(batch_size)))
            if not ids:
                return deleted
            fb = await session.execute(
                delete(Feedback).where(
                    Feedback.tenant_id == tenant_id, Feedback.completion_id.in_(ids)
                )
            )
            done = await session.execute(delete(Completion).where(Completion.id.in_(ids)))
        deleted.feedback += _rowcount(fb)
        deleted.completions += _rowcount(done)


async def _delete_feedback(
    db: Database, where: ColumnElement[bool], tenant_id: str, batch_size: int
) -> int:
    count = 0
    while True:
        async with db.transaction() as session:
            ids = list(
                await session.scalars(
                    select(Feedback.id)
                    .where(Feedback.tenant_id == tenant_id, where)
                    .limit(batch_size)
                )
            )
            if not ids:
                return count
            result = await session.execute(
                delete(Feedback).where(Feedback.tenant_id == tenant_id, Feedback.id.in_(ids))
            )
        count += _rowcount(result)


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)
