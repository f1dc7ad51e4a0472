"""CLI fixtures: the `flywheel` command pointed at a scratch data dir and a database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.config import get_settings


def point_cli_at(monkeypatch: pytest.MonkeyPatch, url: str, data_dir: Path, base: Path) -> None:
    """Settings for the commands run next, through the environment as a shell would set them."""
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", url)
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FLYWHEEL_BASE_MODEL", str(base))
    monkeypatch.setenv("FLYWHEEL_BASE_MODEL_NAME", "demo-base")
    get_settings.cache_clear()


@pytest.fixture
def cli_database(
    database_url: str, demo_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The shared migrated database (SQLite, then PostgreSQL) and a fresh data dir."""
    point_cli_at(monkeypatch, database_url, tmp_path / "data", demo_base)
    yield database_url
    get_settings.cache_clear()


@pytest.fixture
def kept_logging() -> Iterator[None]:
    """Commands that configure logging (serve, the worker) replace the root handlers with one on
    the stderr of the moment, CliRunner's; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def empty_database(
    fresh_database_url: str, demo_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database of the module's own (SQLite, then PostgreSQL), for commands that act on every
    tenant: the shared one holds other tests' opted-in tenants."""
    point_cli_at(monkeypatch, fresh_database_url, tmp_path / "data", demo_base)
    yield fresh_database_url
    get_settings.cache_clear()
