"""Erasure on the write path: rows of an end user erased after they were made never land.

``forget_end_user`` (feedback/retention.py) records the erasure first, then deletes; rows still
queued or spooled in any gateway when it ran are dropped as they reach the database
(``write_records``), and ``rejected.jsonl`` is scrubbed (``scrub_rejected``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.spool import Record, Spool
from gateway.core.db.models import Erasure
from gateway.core.db.session import Database
from gateway.core.time import as_utc


async def erasures(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> dict[tuple[str, str], datetime]:
    """The latest erasure of each (tenant, end user) among ``rows``."""
    users = {(r["tenant_id"], r["end_user"]) for r in rows if r.get("end_user")}
    if not users:
        return {}
    found = await session.execute(
        select(Erasure.tenant_id, Erasure.end_user, func.max(Erasure.erased_at))
        .where(
            Erasure.tenant_id.in_({t for t, _ in users}),
            Erasure.end_user.in_({u for _, u in users}),
        )
        .group_by(Erasure.tenant_id, Erasure.end_user)
    )
    return {(t, u): as_utc(at) for t, u, at in found}


STAMP = {"completion": "received_at", "feedback": "created_at"}


async def scrub_rejected(db: Database, spool: Spool) -> int:
    """Apply the recorded erasures to the spool's ``rejected.jsonl``: rows there never reach
    the database, so the write path's filter never sees them.  Returns the rows removed."""
    records = await asyncio.to_thread(spool.rejected)
    if not records:
        return 0
    async with db.session() as session:
        erased = await erasures(session, [r.row for r in records])
    if not erased:
        return 0

    def drop(record: Record) -> bool:
        return erased_after(record.row, STAMP[record.kind], erased)

    return await asyncio.to_thread(spool.scrub_rejected, drop)


def erased_after(row: dict[str, Any], stamp: str, erased: dict[tuple[str, str], datetime]) -> bool:
    """True for a row of an end user erased after the row was made (it must not come back)."""
    at = erased.get((row["tenant_id"], row.get("end_user") or ""))
    made = row.get(stamp)
    return at is not None and (made is None or as_utc(made) <= at)
