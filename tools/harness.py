"""The harness the tests and the benchmarks share (bench/ never imports tests/): settings for a
throwaway gateway, seeded tenants, ports, a gateway process, and waiting for one to come up."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.core.config import Settings
from gateway.core.db.session import Database

METRICS_TOKEN = "test-metrics-token"  # what Prometheus would send; make_settings sets it
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def make_settings(data_dir: Path, database_url: str, base: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "metrics_token": METRICS_TOKEN,
        "data_dir": data_dir,
        "database_url": database_url,
        "base_model": str(base),
        "base_model_name": "demo-base",
        "demo_bootstrap": False,
        "log_flush_interval_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class SeededTenant:
    name: str
    id: str
    key: str
    key_id: str


async def seed_tenant(
    db: Database, settings: Settings, name: str, adapters: dict[str, Path]
) -> SeededTenant:
    """A tenant with one key and the given adapters (signed with the development key)."""
    from gateway.core.tenants import create_key, create_tenant
    from gateway.services.adapters import add_adapter

    async with db.transaction() as session:
        tenant = await create_tenant(session, name)
        key, secret = await create_key(session, tenant)
        for adapter_name, path in adapters.items():
            await add_adapter(
                session, settings, tenant_name=name, name=adapter_name, path=path, sign=True
            )
    return SeededTenant(name=name, id=tenant.id, key=secret, key_id=key.id)


@contextlib.asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an in-process httpx client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flywheel") as client:
            yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(
    url: str,
    proc: subprocess.Popen[Any],
    log: Path,
    *,
    timeout: float = 120.0,
    interval: float = 0.2,
    request_timeout: float = 1.0,
) -> None:
    """Poll ``url`` (a health or readiness route of the process ``proc``) until it answers 200;
    raise with the end of ``log`` as soon as the process exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=request_timeout).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-5000:] if log.exists() else ""
            raise RuntimeError(f"{url} did not come up (see {log}):\n{tail}")
        time.sleep(interval)  # polling a readiness endpoint, not standing in for synchronisation


@contextlib.asynccontextmanager
async def serve_on_socket(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on this loop, on a socket listening before uvicorn
    starts: connections made meanwhile wait in the backlog, so no readiness polling."""
    import asyncio

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


REPO = Path(__file__).resolve().parent.parent  # the repository root


def start_serve(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``flywheel serve`` as its own process, output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "serve", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def demo_keys(printed: str) -> dict[str, str]:
    """The demo tenants' keys, as the first start prints them."""
    return dict(re.findall(r"^\s+(demo-\w+)\s+(fw-\S+)", printed, re.MULTILINE))
