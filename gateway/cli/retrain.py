"""``flywheel retrain``: one round now, or a worker that runs them by itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from gateway.cli.common import clean_errors, out, run_db, settings
from gateway.cli.retrain_idle import idle_reasons
from gateway.core.config import Settings
from gateway.core.db.session import Database
from gateway.core.logs import configure_logging
from retrain.plan import METHODS, load_recipe
from retrain.worker import heartbeating, run_worker, start_round, worker_name

app = typer.Typer(no_args_is_help=True, help="Feedback -> KTO/DPO rounds -> candidate versions.")


def _progress(event: dict[str, Any]) -> None:
    """One line per training step on stderr: step/total, loss, margins, ETA."""
    typer.echo("  " + str(event.get("line", "")), err=True)


@app.command("run")
@clean_errors
def run(
    tenant: str = typer.Option(...),
    adapter: str = typer.Option(...),
    method: str = typer.Option(
        "auto", help="auto, dpo (with an SFT term), kto, sft, orpo or simpo."
    ),
    seed: int = typer.Option(0, help="Makes the split and the training reproducible."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A recipe file (JSON or TOML) of hyperparameter overrides, by field name "
        "(docs/retrain.md); flags below win over it.",
    ),
    learning_rate: float | None = typer.Option(None, "--learning-rate", help="Peak learning rate."),
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the training rows."),
    beta: float | None = typer.Option(None, "--beta", help="DPO/KTO beta (ORPO lambda)."),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank of a new adapter."),
    sft_weight: float | None = typer.Option(
        None, "--sft-weight", help="Weight of DPO's SFT term (0: DPO alone)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the data summary and plan only."),
    gate: bool = typer.Option(True, help="Run the eval gate on the candidate."),
) -> None:
    """Train one round on the feedback since the last round; the result is a candidate."""
    from retrain.rounds import prepare, run_round  # deferred: TRL and torch

    if method != "auto" and method not in METHODS:
        raise typer.BadParameter(f"--method must be auto or one of {', '.join(METHODS)}")
    overrides = load_recipe(config) if config is not None else {}
    flags = {
        "learning_rate": learning_rate,
        "num_epochs": epochs,
        "beta": beta,
        "lora_r": rank,
        "sft_weight": sft_weight,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if rank is not None and "lora_alpha" not in overrides:
        overrides["lora_alpha"] = 2 * rank  # keep the recipe's alpha = 2r scale

    async def go(db: Database, s: Settings) -> None:
        prepared = await prepare(
            db, s, tenant=tenant, adapter=adapter, method=method, seed=seed, overrides=overrides
        )
        out(prepared.describe())
        if dry_run:
            return
        # Claimed and heartbeated like a worker's round: a killed CLI's round is recovered, and
        # a worker never runs a second round for this adapter meanwhile.
        me = f"cli:{worker_name()}"
        round_id = await start_round(db, prepared.tenant.id, prepared.adapter_id, me)
        async with heartbeating(db, s, round_id, me):
            outcome = await run_round(
                db, s, prepared, seed=seed, round_id=round_id, progress=_progress, gate=gate
            )
        out(f"round {outcome.round_id}: candidate {adapter}@{outcome.candidate_version}")
        out(
            "metrics: "
            + json.dumps(
                {k: round(v, 4) for k, v in outcome.metrics.items() if isinstance(v, float)}
            )
        )
        out("timings (s): " + json.dumps({k: round(v, 2) for k, v in outcome.timings.items()}))
        out(outcome.gate_summary)

    run_db(go)


@app.command("worker")
@clean_errors
def worker(
    once: bool = typer.Option(False, help="Run what is due, then exit."),
    poll: float = typer.Option(10.0, help="Seconds between polls when idle."),
    metrics_port: int = typer.Option(0, help="Serve Prometheus metrics on this port (0: off)."),
) -> None:
    """Schedule rounds for opted-in tenants and run them; safe to run several at once."""
    from prometheus_client import start_http_server

    configure_logging(settings())
    if metrics_port:
        # Round and gate metrics happen here, not in the gateway: expose them for scraping.
        start_http_server(metrics_port)

    async def go(db: Database, s: Settings) -> tuple[int, list[str]]:
        ran = await run_worker(db, s, once=once, poll_s=poll)
        return ran, (await idle_reasons(db) if ran == 0 else [])

    ran, reasons = run_db(go)
    out(f"rounds run: {ran}")
    for reason in reasons:
        out(f"  {reason}")
