"""``flywheel tenants``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from gateway.cli.common import clean_errors, out, run_db
from gateway.core import tenants as svc
from gateway.core.audit import cli_actor
from gateway.core.config import Settings
from gateway.core.db.session import Database
from retrain.plan import check_recipe, load_recipe

app = typer.Typer(no_args_is_help=True, help="Tenants and their settings.")


@app.command("create")
@clean_errors
def create(
    name: str,
    rpm: int = typer.Option(None, help="Requests per minute (default FLYWHEEL_DEFAULT_RPM)."),
    tpm: int = typer.Option(None, help="Tokens per minute (default FLYWHEEL_DEFAULT_TPM)."),
) -> None:
    """Create tenant NAME and print its API key, and only the key, on stdout."""

    async def go(db: Database, _: Settings) -> str:
        async with db.transaction() as session:
            tenant = await svc.create_tenant(
                session, name, by=cli_actor(), rpm_limit=rpm, tpm_limit=tpm
            )
            _key, secret = await svc.create_key(session, tenant, by=cli_actor())
        return secret

    out(run_db(go))


@app.command("list")
@clean_errors
def list_() -> None:
    """List tenants with their limits."""

    async def go(db: Database, s: Settings) -> None:
        async with db.session() as session:
            for t in await svc.list_tenants(session):
                out(
                    f"{t.name:<24} {t.id:<28} rpm={t.rpm_limit or s.default_rpm} "
                    f"tpm={t.tpm_limit or s.default_tpm}{' DISABLED' if t.disabled else ''}"
                )

    run_db(go)


@app.command("update")
@clean_errors
def update(
    name: str,
    rpm: int = typer.Option(None, help="Requests per minute."),
    tpm: int = typer.Option(None, help="Tokens per minute."),
    store_content: bool = typer.Option(None, help="Store prompt and response text."),
    retention_days: int = typer.Option(None, help="Delete completions/feedback older than this."),
    auto_promote: bool = typer.Option(None, help="Promote candidates that pass the gate."),
    retrain: bool = typer.Option(None, help="Let the retrain worker run rounds for this tenant."),
    retrain_min_feedback: int = typer.Option(
        None, help="New feedback rows that make the worker queue a round."
    ),
    retrain_max_age_hours: float = typer.Option(
        None, help="Or: hours after which any new feedback makes the worker queue a round."
    ),
    disabled: bool = typer.Option(None, help="Disable the tenant (its keys stop working)."),
    retrain_recipe: Path = typer.Option(
        None,
        "--retrain-recipe",
        help="A recipe file (JSON or TOML) of hyperparameter overrides for this tenant's "
        "rounds; an empty object clears it (docs/retrain.md).",
    ),
) -> None:
    """Change a tenant's limits and settings."""
    if retrain_max_age_hours is not None and not 0 < retrain_max_age_hours < math.inf:
        raise typer.BadParameter("--retrain-max-age-hours must be a number of hours above 0")
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "rpm_limit": rpm,
            "tpm_limit": tpm,
            "store_content": store_content,
            "retention_days": retention_days,
            "auto_promote": auto_promote,
            "retrain_enabled": retrain,
            "retrain_min_feedback": retrain_min_feedback,
            "retrain_max_age_hours": retrain_max_age_hours,
            "disabled": disabled,
        }.items()
        if v is not None
    }
    if retrain_recipe is not None:
        changes["retrain_recipe"] = load_recipe(retrain_recipe)
        check_recipe(changes["retrain_recipe"])

    async def go(db: Database, _: Settings) -> None:
        async with db.transaction() as session:
            await svc.update_tenant(session, name, by=cli_actor(), **changes)

    run_db(go)
    out(f"updated {name}: {', '.join(f'{k}={v}' for k, v in changes.items()) or 'nothing'}")
