"""``flywheel db``: schema migrations."""

from __future__ import annotations

import typer

from gateway.cli.common import out, settings
from gateway.core.db.migrate import upgrade_sync

app = typer.Typer(no_args_is_help=True, help="Database schema.")


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Alembic migrations up to REVISION (default head)."""
    s = settings()
    upgrade_sync(s.resolved_database_url, revision)
    out(f"database at {s.resolved_database_url.split('@')[-1]} is at {revision}")
