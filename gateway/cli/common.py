"""Helpers shared by CLI commands: settings, a migrated database, errors as one clear line."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError

from gateway.core.config import Settings, get_settings
from gateway.core.db.migrate import upgrade_sync
from gateway.core.db.session import Database
from gateway.core.errors import FlywheelError

P = ParamSpec("P")
T = TypeVar("T")


def settings() -> Settings:
    s = get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return s


def run_db(fn: Callable[[Database, Settings], Awaitable[T]]) -> T:
    """Run ``fn`` with a migrated database, then close it."""
    s = settings()
    upgrade_sync(s.resolved_database_url)

    async def main() -> T:
        db = Database(s.resolved_database_url)
        try:
            return await fn(db, s)
        finally:
            await db.close()

    return asyncio.run(main())


def clean_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Print a FlywheelError as one line on stderr and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except FlywheelError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None
        except ValidationError as exc:  # the settings refused (Settings' own checks)
            first = exc.errors()[0]
            typer.echo(f"error: invalid settings: {first['msg']}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def coro(c: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(c)
