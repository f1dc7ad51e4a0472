"""Recording and reading feedback: validation, tenant isolation, idempotent upsert, outage spool.

Feedback is low volume, so it is written straight to the database in one transaction per
request (a batch is all or nothing).  When the database is unreachable the rows go to the
completion log's spool instead, the caller answers 202, and the log replays them with the
same guarded upsert, so a retried or replayed item never makes a second row.

Diffs: an edit is diffed against the original response text, taken from the database or, while
the completion is still streaming or queued, from ``CompletionLog.pending_text``.  When neither
knows the text yet (still generating, or spooled during an outage) ``diff`` stays null and the
export computes it from the stored completion (feedback.export), so no diff is ever wrong, only
sometimes late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.diff import unified
from feedback.rows import feedback_upsert, normalize_feedback
from gateway.core.db.errors import DB_UNAVAILABLE, is_row_error
from gateway.core.db.models import Completion, Feedback
from gateway.core.db.session import Database
from gateway.core.errors import Conflict, InvalidRequest, NotFound
from gateway.core.ids import new_id
from gateway.core.time import as_utc

if TYPE_CHECKING:
    from feedback.log import CompletionLog
    from feedback.pending import SharedPending

Rating = Literal["up", "down"]
# What an unreachable or failing database raises (connection refused surfaces as OSError).
MAX_BATCH = 100


@dataclass
class FeedbackInput:
    """One item as the client sent it (the API protocol converts into this)."""

    completion_id: str
    rating: Rating | None = None
    edited_output: str | None = None
    comment: str | None = None
    end_user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class StoredFeedback:
    id: str
    completion_id: str
    rating: str | None
    edited_output: str | None
    diff: str | None
    comment: str | None
    end_user: str | None
    metadata: dict[str, Any]
    source: str
    created_at: datetime
    updated_at: datetime
    status: Literal["stored", "queued"]

    @classmethod
    def from_row(cls, row: Any, status: Literal["stored", "queued"]) -> StoredFeedback:
        return cls(
            id=row.id,
            completion_id=row.completion_id,
            rating=row.rating,
            edited_output=row.edited_output,
            diff=row.diff,
            comment=row.comment,
            end_user=row.end_user,
            metadata=row.meta or {},
            source=row.source,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            status=status,
        )


def not_found(completion_id: str) -> NotFound:
    # One message for "does not exist" and "belongs to another tenant": no existence oracle.
    return NotFound(f"No completion found with id '{completion_id}'.", param="completion_id")


def validate(items: Sequence[FeedbackInput]) -> None:
    if not items:
        raise InvalidRequest("Send at least one feedback item.", param="feedback")
    if len(items) > MAX_BATCH:
        raise InvalidRequest(f"At most {MAX_BATCH} feedback items per request.", param="feedback")
    for i, item in enumerate(items):
        where = f"feedback[{i}]." if len(items) > 1 else ""
        for name, value, limit in (
            ("completion_id", item.completion_id, 64),
            ("id", item.id, 128),
            ("end_user", item.end_user, 256),
        ):
            if value is not None and not 0 < len(value) <= limit:
                raise InvalidRequest(f"{name} must be 1 to {limit} characters.", param=where + name)
        if item.rating not in (None, "up", "down"):
            raise InvalidRequest("rating must be 'up' or 'down'.", param=f"{where}rating")
        if item.rating is None and item.edited_output is None and item.comment is None:
            raise InvalidRequest(
                "Feedback needs at least one of rating, edited_output or comment.",
                param=f"{where}rating",
            )


async def record_feedback(
    db: Database,
    log: CompletionLog,
    tenant_id: str,
    items: Sequence[FeedbackInput],
    *,
    scope_completion_id: str | None = None,
    source: str = "api",
    pending: SharedPending | None = None,
) -> list[StoredFeedback]:
    """Store (upsert) the items; ``status`` is "queued" when the database was down.

    ``scope_completion_id`` is set for a browser feedback token: only that completion may be
    addressed, and the signed token already proves it is this tenant's.
    """
    validate(items)
    if scope_completion_id is not None:
        for item in items:
            if item.completion_id != scope_completion_id:
                raise not_found(item.completion_id)
    now = datetime.now(UTC)
    rows = [_row(tenant_id, item, now, source) for item in items]
    try:
        async with db.transaction() as session:
            return await _store(
                session, log, tenant_id, rows, scoped=scope_completion_id, pending=pending
            )
    except DB_UNAVAILABLE as exc:
        if is_row_error(exc):
            raise
        # The database is unreachable: accepted feedback is never dropped.  Ownership cannot
        # be checked now; every later read joins feedback to completions on tenant_id too,
        # so an item naming another tenant's completion stays inert.
        for row in rows:
            row["diff"] = _diff(log.pending_text(row["completion_id"], tenant_id), row)
        await log.spool_feedback(rows)
        return [_queued(row) for row in rows]


def _row(tenant_id: str, item: FeedbackInput, now: datetime, source: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "id": item.id or new_id("fb"),
        "completion_id": item.completion_id,
        "rating": item.rating,
        "edited_output": item.edited_output,
        "diff": None,
        "comment": item.comment,
        "end_user": item.end_user,
        "meta": item.metadata,
        "source": source,
        "created_at": now,
        "updated_at": now,
    }


def _diff(original: str | None, row: dict[str, Any]) -> str | None:
    edited = row["edited_output"]
    if edited is None or original is None:
        return None
    return unified(original, edited)


async def _store(
    session: AsyncSession,
    log: CompletionLog,
    tenant_id: str,
    rows: list[dict[str, Any]],
    *,
    scoped: str | None,
    pending: SharedPending | None,
) -> list[StoredFeedback]:
    ids = sorted({r["completion_id"] for r in rows})
    # Read the log's pending state *before* the database: the writer commits a row and only
    # then forgets it, so a row pending now is either visible to the select below or still
    # pending.  Read after the select, a commit landing in between would look like a 404.
    pending_now = {
        cid: log.pending_text(cid, tenant_id) for cid in ids if log.is_pending(cid, tenant_id)
    }
    texts: dict[str, str | None] = {
        cid: text
        for cid, text in await session.execute(
            select(Completion.id, Completion.response_text).where(
                Completion.tenant_id == tenant_id, Completion.id.in_(ids)
            )
        )
    }
    # Still streaming or still in the write queue (here, or on another replica) is fine: the
    # row is on its way.  A browser token (scoped) already proves the id.
    unknown = {cid for cid in ids if cid not in texts and scoped is None and cid not in pending_now}
    if unknown and pending is not None:
        unknown = {cid for cid in unknown if not await pending.contains(tenant_id, cid)}
    stored: list[StoredFeedback] = []
    for row in rows:
        cid = row["completion_id"]
        if cid in unknown:
            raise not_found(cid)
        original = texts[cid] if cid in texts else pending_now.get(cid)
        row["diff"] = _diff(original, row)
        stmt = feedback_upsert(session).returning(*Feedback.__table__.c)
        result = (await session.execute(stmt, normalize_feedback(row))).first()
        if result is None:
            result = await _refused_update(session, tenant_id, row)
        stored.append(StoredFeedback.from_row(result, "stored"))
    return stored


async def _refused_update(session: AsyncSession, tenant_id: str, row: dict[str, Any]) -> Any:
    """The upsert's guard refused: the id belongs to another completion, or is newer."""
    existing = (
        await session.execute(
            select(Feedback).where(Feedback.tenant_id == tenant_id, Feedback.id == row["id"])
        )
    ).scalar_one()
    if existing.completion_id != row["completion_id"]:
        raise Conflict(
            f"Feedback id '{row['id']}' is already used for another completion.", param="id"
        )
    return existing  # a newer write (clock skew between replicas) wins; report what is stored


def _queued(row: dict[str, Any]) -> StoredFeedback:
    return StoredFeedback(
        id=row["id"],
        completion_id=row["completion_id"],
        rating=row["rating"],
        edited_output=row["edited_output"],
        diff=row["diff"],
        comment=row["comment"],
        end_user=row["end_user"],
        metadata=row["meta"],
        source=row["source"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        status="queued",
    )


async def list_feedback(
    db: Database, log: CompletionLog, tenant_id: str, completion_id: str
) -> list[StoredFeedback]:
    """The tenant's feedback on one completion; 404 if the completion is not the tenant's."""
    async with db.session() as session:
        rows = list(
            await session.scalars(
                select(Feedback)
                .where(Feedback.tenant_id == tenant_id, Feedback.completion_id == completion_id)
                .order_by(Feedback.created_at, Feedback.id)
            )
        )
        if not rows and not log.is_pending(completion_id, tenant_id):
            exists = await session.scalar(
                select(Completion.id).where(
                    Completion.tenant_id == tenant_id, Completion.id == completion_id
                )
            )
            if exists is None:
                raise not_found(completion_id)
    return [StoredFeedback.from_row(r, "stored") for r in rows]
