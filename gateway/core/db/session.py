"""Async engine and session factory.  Created by the app lifespan (or the CLI), never at import."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        # WAL lets readers run beside the batched log writer; foreign keys are off by default.
        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(url, **kwargs)
    event.listen(engine.sync_engine, "before_cursor_execute", _no_nul, retval=True)
    return engine


def _private_sqlite_file(url: str) -> None:
    """The SQLite file holds prompts, answers and key hashes: create it readable by this user
    only (SQLite gives its -wal and -shm files the database file's permissions), and tighten
    one an earlier version created world-readable."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


NUL, REPLACEMENT = "\x00", "\ufffd"


def _clean(value: Any) -> Any:
    return value.replace(NUL, REPLACEMENT) if isinstance(value, str) and NUL in value else value


def _no_nul(
    _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
) -> tuple[str, Any]:
    """PostgreSQL text cannot hold U+0000, and a model or a client can produce it: a completion
    whose answer contained one failed its insert and was spooled forever.  Every text parameter
    has NUL replaced by U+FFFD, in writes and in lookups alike, so both still match."""
    return statement, _clean_all(parameters)


def _clean_all(parameters: Any) -> Any:
    """Every string in ``parameters``, however they are nested: one row's values, a list of
    rows (executemany), or one flat tuple of several rows' values, which is what SQLAlchemy's
    insertmanyvalues batching hands asyncpg with ``executemany`` still set."""
    if isinstance(parameters, tuple | list):
        return type(parameters)(_clean_all(v) for v in parameters)
    return _clean(parameters)


class Database:
    """Owns the engine and hands out sessions."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **kwargs)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session, session.begin():
            yield session

    async def ping(self) -> bool:
        from sqlalchemy import text

        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self.engine.dispose()
