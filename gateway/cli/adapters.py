"""``flywheel adapters``: register, list and verify adapter versions."""

from __future__ import annotations

from pathlib import Path

import typer

from adapters.registry import list_versions
from adapters.remote import remote_swap
from gateway.cli.common import clean_errors, out, run_db
from gateway.core.audit import cli_actor
from gateway.core.config import Settings
from gateway.core.db.session import Database
from gateway.core.tenants import get_tenant
from gateway.services.swap import offline_swap

app = typer.Typer(no_args_is_help=True, help="Adapters and their versions.")


@app.command("add")
@clean_errors
def add(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="A PEFT LoRA directory."),
    tenant: str = typer.Option(..., help="Tenant name."),
    name: str = typer.Option(
        ..., "--adapter", "--name", help="Adapter name (what clients put in `model`)."
    ),
    sign: bool = typer.Option(False, "--sign", help="Sign the stored copy with the ops key."),
    signature: Path = typer.Option(None, help="A signature bundle made elsewhere for PATH."),
) -> None:
    """Register PATH as the next version of TENANT's ADAPTER."""
    # deferred: model-signing, for this command only
    from gateway.services.adapters import add_adapter

    async def go(db: Database, s: Settings) -> str:
        async with db.transaction() as session:
            added = await add_adapter(
                session, s, tenant_name=tenant, name=name, path=path, sign=sign, signature=signature
            )
            v = added.version
            note = (
                "signed"
                if added.signed
                else "UNSIGNED (refused at load while signatures are required)"
            )
            return f"{name}@{v.version} digest={v.digest[:16]} rank={v.rank} {note}"

    out(run_db(go))


@app.command("list")
@clean_errors
def list_(tenant: str = typer.Option(None, help="Only this tenant.")) -> None:
    """Show adapter versions; `*` marks the active one."""

    async def go(db: Database, _: Settings) -> None:
        async with db.session() as session:
            tenant_id = (await get_tenant(session, tenant)).id if tenant else None
            out(
                f"  {'TENANT':<20} {'ADAPTER':<20} {'VER':>4} {'STATE':<10} {'RANK':>4} SIGNED DIGEST"
            )
            for t, a, v in await list_versions(session, tenant_id):
                mark = "*" if a.active_version_id == v.id else " "
                out(
                    f"{mark} {t.name:<20} {a.name:<20} {v.version:>4} {v.state:<10} {v.rank:>4} "
                    f"{'yes' if v.signature_path else 'no ':<6} {v.digest[:16]}"
                )

    run_db(go)


@app.command("verify")
@clean_errors
def verify(
    tenant: str = typer.Option(...),
    name: str = typer.Option(..., "--adapter", "--name"),
    version: int = typer.Option(...),
) -> None:
    """Check a stored version's signature against the trusted public key."""
    # deferred: model-signing, for this command only
    from gateway.services.adapters import verify_recorded

    async def go(db: Database, s: Settings) -> str:
        row = await verify_recorded(
            db, s, tenant_name=tenant, name=name, version=version, by=cli_actor()
        )
        return f"{name}@{row.version}: signature OK ({row.digest[:16]})"

    out(run_db(go))


def _swap(tenant: str, name: str, version: int | None, reason: str, offline: bool) -> None:

    async def go(db: Database, s: Settings) -> dict[str, object]:
        if offline:
            return await offline_swap(
                db, s, tenant, name, version=version, reason=reason, actor="cli"
            )
        return await remote_swap(s, tenant, name, version=version, reason=reason)

    r = run_db(go)
    out(
        f"{r['action']}: {name} v{r['from_version']} -> v{r['to_version']} in {float(str(r['seconds'])):.3f}s"
    )


@app.command("promote")
@clean_errors
def promote(
    tenant: str = typer.Option(...),
    name: str = typer.Option(..., "--adapter", "--name"),
    version: int = typer.Option(...),
    reason: str = typer.Option("", help="Recorded with the promotion."),
    offline: bool = typer.Option(False, help="No gateway running: verify, probe and flip here."),
) -> None:
    """Hot-swap TENANT's adapter to VERSION (load, probe, flip, drain) on the running gateway."""
    _swap(tenant, name, version, reason, offline)


@app.command("rollback")
@clean_errors
def rollback(
    tenant: str = typer.Option(...),
    name: str = typer.Option(..., "--adapter", "--name"),
    reason: str = typer.Option("", help="Recorded with the rollback."),
    offline: bool = typer.Option(False, help="No gateway running: verify, probe and flip here."),
) -> None:
    """Return TENANT's adapter to the version that served before the current one."""
    _swap(tenant, name, None, reason, offline)


@app.command("sign")
@clean_errors
def sign(
    tenant: str = typer.Option(...),
    name: str = typer.Option(..., "--adapter", "--name"),
    version: int = typer.Option(...),
) -> None:
    """Sign a stored version with the ops private key (for keys kept off the cluster)."""
    # deferred: model-signing, for this command only
    from gateway.services.adapters import sign_version

    async def go(db: Database, s: Settings) -> str:
        async with db.transaction() as session:
            row = await sign_version(session, s, tenant_name=tenant, name=name, version=version)
            return f"{name}@{row.version} signed: {row.signature_path}"

    out(run_db(go))
