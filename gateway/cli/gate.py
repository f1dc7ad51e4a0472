"""``flywheel gate``: run the eval gate on a candidate version."""

from __future__ import annotations

import typer

from gateway.cli.common import clean_errors, out, run_db
from gateway.core.config import Settings
from gateway.core.db.session import Database

app = typer.Typer(no_args_is_help=True, help="The eval gate.")


@app.command("run")
@clean_errors
def run(
    tenant: str = typer.Option(...),
    adapter: str = typer.Option(...),
    version: int = typer.Option(...),
    round_id: str = typer.Option(None, help="Gate on this round's held-out feedback too."),
) -> None:
    """Compare VERSION with the serving version; mark it passed (and sign it) or rejected."""
    from retrain.gate import run_gate  # deferred: model-signing (and torch when scoring)

    async def go(db: Database, s: Settings) -> tuple[str, bool]:
        outcome = await run_gate(
            db, s, tenant=tenant, adapter=adapter, version=version, round_id=round_id, actor="cli"
        )
        return outcome.summary, outcome.passed

    text, passed = run_db(go)
    out(text)
    if not passed:
        raise typer.Exit(2)
