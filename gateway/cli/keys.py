"""``flywheel keys``: tenant API keys and the adapter signing keypair."""

from __future__ import annotations

from pathlib import Path

import typer

from gateway.cli.common import clean_errors, out, run_db, settings
from gateway.core import tenants as svc
from gateway.core.audit import cli_actor
from gateway.core.config import Settings
from gateway.core.db.session import Database

app = typer.Typer(no_args_is_help=True, help="API keys and signing keys.")


@app.command("create")
@clean_errors
def create(tenant: str) -> None:
    """Issue an additional key for TENANT; prints the key only."""

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            _key, secret = await svc.create_key(
                session, await svc.get_tenant(session, tenant), by=cli_actor()
            )
        return secret

    out(run_db(go))


@app.command("rotate")
@clean_errors
def rotate(tenant: str) -> None:
    """Issue a new key for TENANT and revoke its other keys; prints the new key only."""

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            _key, secret, _revoked = await svc.rotate_keys(
                session, await svc.get_tenant(session, tenant), by=cli_actor()
            )
        return secret

    out(run_db(go))


@app.command("revoke")
@clean_errors
def revoke(key_id: str) -> None:
    """Revoke one key by its id (see `flywheel keys list`)."""

    async def go(db: Database, _: Settings) -> None:
        async with db.transaction() as session:
            await svc.revoke_key(session, key_id, by=cli_actor())

    run_db(go)
    out(f"revoked {key_id}")


@app.command("list")
@clean_errors
def list_(tenant: str) -> None:
    """List TENANT's keys (ids and prefixes; the keys themselves are never stored)."""

    async def go(db: Database, _: Settings) -> None:
        async with db.session() as session:
            for k in await svc.list_keys(session, await svc.get_tenant(session, tenant)):
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                out(f"{k.id:<28} {k.prefix}...  {state}")

    run_db(go)


@app.command("signing-init")
@clean_errors
def signing_init(
    directory: Path = typer.Option(None, help="Where to write signing.key and signing.pub."),
) -> None:
    """Create the adapter signing keypair (P-256).  Keep signing.key off the gateway hosts."""
    from adapters.signing import generate_keypair  # deferred: model-signing, for this command only

    target = directory or settings().data_dir / "signing"
    private, public = generate_keypair(target)
    out(f"private key: {private}\npublic key:  {public}")
