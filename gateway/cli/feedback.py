"""``flywheel feedback``: export for training, erase an end user, enforce retention."""

from __future__ import annotations

import sys
from datetime import datetime

import typer

from feedback.export import export as run_export
from feedback.retention import enforce, forget_end_user
from gateway.cli.common import clean_errors, out, run_db
from gateway.core.audit import cli_actor
from gateway.core.config import Settings
from gateway.core.db.session import Database
from gateway.core.tenants import get_tenant

app = typer.Typer(no_args_is_help=True, help="Feedback export and data erasure.")


@app.command("export")
@clean_errors
def export(
    tenant: str = typer.Option(...),
    adapter: str = typer.Option(None, help="Only completions served by this adapter."),
    since: datetime = typer.Option(None, help="Only feedback updated at or after this time."),
    format: str = typer.Option("kto", "--format", help="kto or dpo (TRL dataset formats)."),
) -> None:
    """Write TRL-ready JSONL on stdout: KTO {prompt, completion, label} or DPO {prompt, chosen, rejected}."""

    if format not in ("kto", "dpo"):
        raise typer.BadParameter("--format must be kto or dpo")

    async def go(db: Database, _: Settings) -> int:
        return await run_export(db, tenant, adapter, since, format, sys.stdout)

    n = run_db(go)
    typer.echo(f"{n} rows", err=True)


@app.command("forget")
@clean_errors
def forget(tenant: str = typer.Option(...), end_user: str = typer.Option(...)) -> None:
    """Erase an end user's completions and feedback."""

    async def go(db: Database, _: Settings) -> object:
        async with db.session() as session:
            t = await get_tenant(session, tenant)
        return await forget_end_user(db, t.id, end_user, by=cli_actor())

    out(f"erased: {run_db(go)}")


@app.command("retention")
@clean_errors
def retention() -> None:
    """Delete completions and feedback past each tenant's retention, in batches."""

    async def go(db: Database, _: Settings) -> object:
        return await enforce(db)

    out(f"deleted: {run_db(go)}")
