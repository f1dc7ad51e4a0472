"""The ``flywheel`` command line."""

from __future__ import annotations

import os

import typer

# Nothing is fetched from a model hub at run time: bases are local paths or already cached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Libraries' progress bars (GGUF conversion, weight loading, datasets) would flood the logs and
# the terminal; Flywheel prints its own progress lines (training steps with an ETA).
os.environ.setdefault("TQDM_DISABLE", "1")

from gateway.cli import (
    adapters,
    admin,
    base,
    db,
    demo,
    engine,
    feedback,
    gate,
    golden,
    keys,
    retrain,
    serve,
    tenants,
)
from gateway.cli.common import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    help="Flywheel: multi-LoRA gateway with a feedback loop.",
)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")
app.add_typer(tenants.app, name="tenants")
app.add_typer(keys.app, name="keys")
app.add_typer(adapters.app, name="adapters")
app.add_typer(feedback.app, name="feedback")
app.add_typer(golden.app, name="golden")
app.add_typer(gate.app, name="gate")
app.add_typer(retrain.app, name="retrain")
app.add_typer(demo.app, name="demo")
app.add_typer(admin.app, name="admin")
app.add_typer(base.app, name="base")
app.add_typer(engine.app, name="engine")

if __name__ == "__main__":
    app()
