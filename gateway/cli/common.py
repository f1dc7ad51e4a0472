"""Helpers shared by CLI commands: settings, a migrated database, errors as one clear line."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

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


class OneLineErrors(TyperGroup):
    """The root ``flywheel`` command: a usage error (unknown option, missing option, bad value)
    is one line on stderr and exit 1, like every other error (docs/cli.md), instead of typer's
    framed usage block and exit 2, which ``flywheel gate run`` keeps for a rejected candidate."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            # Not standalone: typer raises its errors here instead of printing them, and returns
            # the code of a typer.Exit (gate run's 2, clean_errors' 1, --help's 0).
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:
            sys.exit(_show_usage_error(exc))
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _show_usage_error(exc: typer.TyperException) -> int:
    # A group called without its command "fails" with its help as the message; typer's own
    # error printer tells it apart by class name too, since typer does not export the class.
    if type(exc).__name__ == "NoArgsIsHelpError":
        help_text = exc.format_message()  # empty where rich already printed the help
        if help_text:
            typer.echo(help_text, err=True)
        return 1
    # Usage errors carry the context of the command that refused them; typer's public
    # exception type does not declare it.
    ctx = getattr(exc, "ctx", None)
    where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    message = " ".join(exc.format_message().split()).rstrip(".")
    typer.echo(f"error: {message}{where}", err=True)
    return 1


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def coro(c: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(c)
