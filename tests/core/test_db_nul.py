"""U+0000 in any text parameter, however SQLAlchemy batches the rows (gateway/core/db/session.py)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from gateway.core.db.models import TrainingRound
from gateway.core.db.session import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_rows_inserted_in_one_batch_have_nul_replaced(db: Database) -> None:
    """Several rows in one flush go out as one insertmanyvalues batch: on asyncpg that is one
    flat tuple of every row's values with ``executemany`` set (it once broke the NUL filter,
    and with it every multi-row insert of a table with a JSON default)."""
    ids = [f"round_nul_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    async with db.transaction() as session:
        for rid in ids:
            session.add(TrainingRound(id=rid, tenant_id="t", adapter_id="a\x00b", state="queued"))
    async with db.session() as session:
        stored = (
            await session.scalars(select(TrainingRound.adapter_id).where(TrainingRound.id.in_(ids)))
        ).all()
    # SQLite text holds U+0000 as it is; only PostgreSQL's cannot (the filter is on it alone).
    assert stored == ["a\ufffdb" if db.is_postgres else "a\x00b"] * 3
