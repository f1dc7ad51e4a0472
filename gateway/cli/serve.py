"""``flywheel serve``: the gateway on uvicorn, in one process or several."""

from __future__ import annotations

import logging
import os
import shutil

import typer
import uvicorn

from adapters.base_models import resolve_base
from gateway.cli.common import settings
from gateway.core.admin_tokens import ensure_dev_admin_token
from gateway.core.config import Settings
from gateway.core.db.migrate import upgrade_sync
from gateway.core.db.session import Database
from gateway.core.logs import configure_logging

log = logging.getLogger("flywheel")


def serve(
    host: str = typer.Option(None, help="Bind address (default FLYWHEEL_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default FLYWHEEL_PORT, 8000)."),
    workers: int = typer.Option(
        1,
        min=1,
        help="Worker processes on one port. Above 1: Prometheus multiprocess mode, one spool "
        "per worker; give them FLYWHEEL_REDIS_URL so rate limits are shared.",
    ),
) -> None:
    """Start the gateway (migrations applied, demo bootstrapped on an empty database)."""
    from gateway.app import create_app  # deferred: the app imports model-signing; serve only

    s = settings()
    configure_logging(s)
    log.info("starting Flywheel with the %s engine, %d worker(s)", s.engine, workers)
    # The app logs its console URL from these; worker processes read them from the environment.
    bind = {"host": host or s.host, "port": port or s.port}
    s = s.model_copy(update=bind)
    os.environ.update({"FLYWHEEL_HOST": s.host, "FLYWHEEL_PORT": str(s.port)})
    common = {
        **bind,
        "log_config": None,
        "timeout_graceful_shutdown": 30,
    }
    if workers == 1:
        uvicorn.run(create_app(s), **common)  # type: ignore[arg-type]
        return
    _prepare_once(s)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Counters and histograms summed over the workers at scrape time; the directory must
        # start empty, and must be set before any worker imports prometheus_client.
        shared = s.data_dir / "prometheus"
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    if not s.redis_url:
        log.warning(
            "%d workers without FLYWHEEL_REDIS_URL: each enforces the rate limits on its own, "
            "so a tenant gets up to %d times its limit",
            workers,
            workers,
        )
    uvicorn.run("gateway.app:worker_app", factory=True, workers=workers, **common)  # type: ignore[arg-type]


def _prepare_once(s: Settings) -> None:
    """Migrations, the demo bootstrap and the development admin token, here, before the workers
    start: done by every worker at once they would race (two CREATE TABLEs, two sets of demo
    tenants, two admin-token files)."""
    import asyncio

    # deferred: model-signing; serve only
    from gateway.services.bootstrap import demo_bootstrap, print_demo_keys

    upgrade_sync(s.resolved_database_url)

    async def bootstrap() -> None:
        db = Database(s.resolved_database_url)
        try:
            if s.bootstraps_demo:
                print_demo_keys(await demo_bootstrap(db, s, resolve_base(s)))
            async with db.transaction() as session:
                await ensure_dev_admin_token(session, s)
        finally:
            await db.close()

    asyncio.run(bootstrap())
