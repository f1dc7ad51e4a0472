"""``flywheel golden``: frozen golden sets for the eval gate."""

from __future__ import annotations

from pathlib import Path

import typer

from adapters.golden import freeze_golden_set, parse_items
from gateway.cli.common import clean_errors, out, run_db
from gateway.core.audit import cli_actor
from gateway.core.config import Settings
from gateway.core.db.session import Database

app = typer.Typer(no_args_is_help=True, help="Golden sets (frozen; new content = new version).")


@app.command("add")
@clean_errors
def add(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL golden items."),
    tenant: str = typer.Option(...),
    adapter: str = typer.Option(...),
) -> None:
    """Freeze FILE as the next golden set version of TENANT's ADAPTER."""

    items = parse_items(file.read_text())

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            row = await freeze_golden_set(session, tenant, adapter, items, by=cli_actor())
            return f"golden set v{row.version}: {len(items)} items, sha256 {row.content_hash[:16]}"

    out(run_db(go))
