"""``flywheel admin``: admin tokens for the admin API."""

from __future__ import annotations

import typer

from gateway.cli.common import clean_errors, out, run_db
from gateway.core import audit
from gateway.core.admin_tokens import create_admin_token, rotate_admin_tokens
from gateway.core.config import Settings
from gateway.core.db.session import Database

app = typer.Typer(no_args_is_help=True, help="Admin API tokens (hashed in the database).")


@app.command("token-create")
@clean_errors
def token_create() -> None:
    """Create an admin token; prints the token only."""

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            row, secret = await create_admin_token(session)
            audit.record(session, actor="cli", action="admin_token.create", target=row.id)
        return secret

    out(run_db(go))


@app.command("token-rotate")
@clean_errors
def token_rotate() -> None:
    """Create a new admin token and revoke all others; prints the new token only."""

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            row, secret = await rotate_admin_tokens(session)
            audit.record(session, actor="cli", action="admin_token.rotate", target=row.id)
        return secret

    out(run_db(go))
