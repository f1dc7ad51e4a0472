"""The Alembic chain builds exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.core.db.migrate import upgrade_sync
from gateway.core.db.models import Base


async def _diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


def test_sqlite_migrations_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    upgrade_sync(url)
    assert asyncio.run(_diff(url)) == []


def test_postgres_migrations_match_the_models(postgres_url: str) -> None:
    upgrade_sync(postgres_url)  # the session's database, already at head or brought there
    assert asyncio.run(_diff(postgres_url)) == []
