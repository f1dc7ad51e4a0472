"""``flywheel serve``: the gateway on uvicorn."""

from __future__ import annotations

import logging

import typer
import uvicorn


def serve(
    host: str = typer.Option(None, help="Bind address (default FLYWHEEL_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default FLYWHEEL_PORT, 8000)."),
) -> None:
    """Start the gateway (migrations applied, demo bootstrapped on an empty database)."""
    from gateway.app import create_app
    from gateway.cli.common import settings
    from gateway.logs import configure_logging

    s = settings()
    configure_logging(s)
    logging.getLogger("flywheel").info("starting Flywheel with the %s engine", s.engine)
    uvicorn.run(
        create_app(s),
        host=host or s.host,
        port=port or s.port,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
