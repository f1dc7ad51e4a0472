"""``flywheel golden``: frozen golden sets for the eval gate."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cli.common import clean_errors, out, run_db
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
    from adapters.golden import add_golden_set, parse_items
    from adapters.registry import get_adapter
    from gateway.core import audit
    from gateway.core.tenants import get_tenant

    items = parse_items(file.read_text())

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            t = await get_tenant(session, tenant)
            a = await get_adapter(session, t.id, adapter)
            row = await add_golden_set(session, a, items)
            audit.record(
                session,
                actor="cli",
                action="golden.add",
                target=f"{adapter}/golden@{row.version}",
                tenant_id=t.id,
            )
            return f"golden set v{row.version}: {len(items)} items, sha256 {row.content_hash[:16]}"

    out(run_db(go))
