"""Completion and feedback rows: their storable shape and the idempotent SQL that writes them.

Both databases get the same statements (``INSERT ... ON CONFLICT``): a completion is inserted
once by id; feedback is upserted by (tenant, id), guarded so that an id cannot move to another
completion and a late replay cannot undo a newer edit.  ``write_records`` writes one batch of
either kind, dropping the rows of erased end users (feedback/erasure.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.erasure import STAMP, erased_after, erasures
from feedback.spool import Record
from gateway.core.db.models import Completion, Feedback
from gateway.core.db.session import Database
from gateway.core.time import as_utc

COLUMNS: tuple[str, ...] = tuple(c.name for c in Completion.__table__.columns)
REQUIRED = ("id", "tenant_id", "kind", "model", "status", "received_at")
DEFAULTS: dict[str, Any] = {"params": {}, "prompt_tokens": 0, "completion_tokens": 0}


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A full, storable Completion row; enforces the tenant's ``_store_content`` hint."""
    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise ValueError(f"completion row lacks {', '.join(missing)}")
    out = {col: row.get(col, DEFAULTS.get(col)) for col in COLUMNS}
    if row.get("_store_content") is False:
        out["request"] = None
        out["response_text"] = None
    if out["created_at"] is None:
        # Stamped at submit, so a row replayed after an outage keeps its real age (retention).
        out["created_at"] = datetime.now(UTC)
    for col, value in out.items():
        if isinstance(value, datetime):
            # SQLite stores the wall-clock digits only; UTC everywhere keeps comparisons right.
            out[col] = as_utc(value)
    return out


def _is_pg(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def insert_completions(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany, idempotent by primary key on both PostgreSQL and SQLite."""
    if not rows:
        return
    table = cast(Table, Completion.__table__)
    insert = pg_insert(table) if _is_pg(session) else sqlite_insert(table)
    await session.execute(insert.on_conflict_do_nothing(index_elements=["id"]), list(rows))


# What a repeated feedback id replaces: everything the client sent, never the completion it is
# about or when it was first stored.
FEEDBACK_UPDATABLE = (
    "rating",
    "edited_output",
    "diff",
    "comment",
    "end_user",
    "meta",
    "source",
    "updated_at",
)


def feedback_upsert(session: AsyncSession) -> Any:
    """INSERT ... ON CONFLICT (tenant_id, id) DO UPDATE, guarded twice.

    The update applies only to feedback on the same completion (an id cannot be used to
    overwrite feedback on another completion, e.g. by a browser token scoped to one), and only
    when it is not older than what is stored, so a late spool replay cannot undo a newer edit.
    """
    table = cast(Table, Feedback.__table__)
    insert = pg_insert(table) if _is_pg(session) else sqlite_insert(table)
    return insert.on_conflict_do_update(
        index_elements=["tenant_id", "id"],
        set_={col: insert.excluded[col] for col in FEEDBACK_UPDATABLE},
        where=(table.c.completion_id == insert.excluded.completion_id)
        & (table.c.updated_at <= insert.excluded.updated_at),
    )


def normalize_feedback(row: dict[str, Any]) -> dict[str, Any]:
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


async def upsert_feedback_rows(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Replay path: executemany; a refused update (guards above) is simply skipped."""
    if rows:
        await session.execute(feedback_upsert(session), [normalize_feedback(r) for r in rows])


async def write_records(db: Database, records: Sequence[Record]) -> None:
    """Completions and feedback of one batch, in one transaction."""
    completions = [r.row for r in records if r.kind == "completion"]
    feedback = [r.row for r in records if r.kind == "feedback"]
    async with db.transaction() as session:
        erased = await erasures(session, completions + feedback)
        if erased:
            completions = [
                r for r in completions if not erased_after(r, STAMP["completion"], erased)
            ]
            feedback = [r for r in feedback if not erased_after(r, STAMP["feedback"], erased)]
        await insert_completions(session, completions)
        if feedback:
            await upsert_feedback_rows(session, feedback)
