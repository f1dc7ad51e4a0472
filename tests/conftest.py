"""Shared fixtures: a demo base model and demo adapters built locally once per test session."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gateway.core.db.session import Database


@pytest.fixture(scope="session")
def demo_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adapters.demo import build_demo_base

    return build_demo_base(tmp_path_factory.mktemp("models") / "demo-base")


@pytest.fixture(scope="session")
def demo_adapters(demo_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight demo LoRA adapters with different seeds (so different outputs)."""
    from adapters.demo import build_demo_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [build_demo_adapter(demo_base, root / f"a{i}", seed=100 + i) for i in range(8)]


@pytest.fixture(scope="session")
def real_base() -> Path:
    """SmolLM2-135M-Instruct, converted once into the cache (keyed on its package version).

    The wheel comes from ``make base`` (which ``make test`` runs). Outside CI a missing wheel
    skips the real-model tests; in CI it is an error, never a skip.
    """
    from adapters.base_models import SMOLLM2, BaseModelError, cached_wheel, convert

    try:
        cached_wheel(SMOLLM2)
    except BaseModelError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    cache = Path(os.environ.get("FLYWHEEL_CACHE_DIR") or Path.home() / ".cache" / "flywheel")
    return convert(cache / "models" / f"smollm2-135m-instruct-{SMOLLM2.version}", SMOLLM2)


# --- databases -------------------------------------------------------------------------------
# Every DB-touching test runs on SQLite and on real PostgreSQL.  PostgreSQL comes from
# FLYWHEEL_TEST_DATABASE_URL, or a fresh database created (and dropped) on the local server at
# 127.0.0.1:5432.  In CI (CI=true) a missing PostgreSQL is an error, never a skip.

PG_ADMIN_URL = os.environ.get(
    "FLYWHEEL_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    given = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
    if given:
        yield given
        return
    name = f"flywheel_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL is required in CI but unreachable: {exc}") from exc
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database URL, once per backend per session."""
    from gateway.core.db.migrate import upgrade_sync

    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'flywheel.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_sync(url)
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fresh_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database (not migrated) per module and backend, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fresh') / 'flywheel.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips or fails (in CI) like every PG test
    name = f"flywheel_app_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
