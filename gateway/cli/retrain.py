"""``flywheel retrain``: one round now, or a worker that runs them by itself."""

from __future__ import annotations

import json
from typing import Any

import typer

from gateway.cli.common import clean_errors, out, run_db
from gateway.config import Settings
from gateway.db.session import Database

app = typer.Typer(no_args_is_help=True, help="Feedback -> KTO/DPO rounds -> candidate versions.")


def _progress(event: dict[str, Any]) -> None:
    keys = ("step", "epoch", "loss", "rewards/margins", "rewards/accuracies")
    typer.echo(
        "  "
        + "  ".join(
            f"{k}={event[k]:.4g}" if isinstance(event.get(k), float) else f"{k}={event[k]}"
            for k in keys
            if k in event
        ),
        err=True,
    )


@app.command("run")
@clean_errors
def run(
    tenant: str = typer.Option(...),
    adapter: str = typer.Option(...),
    method: str = typer.Option("auto", help="auto, kto or dpo."),
    seed: int = typer.Option(0, help="Makes the split and the training reproducible."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the data summary and plan only."),
    gate: bool = typer.Option(True, help="Run the eval gate on the candidate."),
) -> None:
    """Train one round on the feedback since the last round; the result is a candidate."""
    from retrain.rounds import prepare, run_round
    from retrain.worker import heartbeating, start_round, worker_name

    if method not in ("auto", "kto", "dpo"):
        raise typer.BadParameter("--method must be auto, kto or dpo")

    async def go(db: Database, s: Settings) -> None:
        prepared = await prepare(db, s, tenant=tenant, adapter=adapter, method=method, seed=seed)
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

    from gateway.cli.common import settings
    from gateway.logs import configure_logging
    from retrain.worker import run_worker

    configure_logging(settings())
    if metrics_port:
        # Round and gate metrics happen here, not in the gateway: expose them for scraping.
        start_http_server(metrics_port)

    async def go(db: Database, s: Settings) -> int:
        return await run_worker(db, s, once=once, poll_s=poll)

    out(f"rounds run: {run_db(go)}")
