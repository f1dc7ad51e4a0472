"""A gateway over a real socket in front of a vLLM-shaped upstream, for the streaming tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.state import AppState
from tools.harness import make_settings, seed_tenant, serve_on_socket


@dataclass
class SocketGateway:
    """A gateway on uvicorn over a real socket, with the vLLM engine in front of ``upstream``."""

    client: httpx.AsyncClient  # to the gateway
    state: AppState
    key: str  # tenant "acme"'s API key


@asynccontextmanager
async def gateway_before(upstream: Any, tmp_path: Path, base: Path) -> AsyncIterator[SocketGateway]:
    """The upstream (an ASGI app standing in for vLLM, which needs a GPU) and the gateway with
    the vLLM engine in front of it, both served on sockets on this loop."""
    async with serve_on_socket(upstream) as upstream_url:
        settings = make_settings(
            tmp_path,
            f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}",
            base,
            engine="vllm",
            vllm_urls=upstream_url,
        )
        app = create_app(settings)
        async with (
            serve_on_socket(app) as gateway_url,
            httpx.AsyncClient(base_url=gateway_url, timeout=10) as client,
        ):
            assert (await client.get("/healthz")).status_code == 200  # the lifespan has run
            state: AppState = app.state.flywheel
            tenant = await seed_tenant(state.db, settings, "acme", {})
            yield SocketGateway(client, state, tenant.key)


async def reply(send: Any, status: int, obj: object) -> None:
    """A JSON answer from an upstream ASGI app."""
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
