"""A client that hangs up mid-stream, over real sockets: the gateway (on uvicorn) drops its
upstream call at once and logs the completion as cancelled.

The upstream is a vLLM-shaped ASGI app that sends one token and then holds the stream open
until its caller goes away, so the only way this test passes is the hang-up travelling from
the client through the gateway to the engine connection.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.core.db.models import Completion
from gateway.state import AppState
from tests.gateway.api.socket_gateway import gateway_before, reply
from tools.harness import make_settings, seed_tenant, serve_on_socket

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class HoldingUpstream:
    """Answers vLLM's routes; a completion sends "Hello" and waits for the caller to leave."""

    caller_left: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path == "/v1/models":
            cards = [{"id": "demo-base", "object": "model", "root": "demo-base", "parent": None}]
            await reply(send, 200, {"object": "list", "data": cards})
        elif path == "/v1/unload_lora_adapter":
            err = {"message": "cannot be found", "type": "NotFoundError", "code": 404}
            await reply(send, 404, {"error": err})
        elif path == "/v1/chat/completions":
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            event = {"choices": [{"index": 0, "delta": {"content": "Hello"}}]}
            body = b"data: " + json.dumps(event).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.caller_left.set()
        else:  # /health
            await reply(send, 200, {})


async def test_hanging_up_mid_stream_cancels_the_upstream_call(
    tmp_path: Path, demo_base: Path
) -> None:
    upstream = HoldingUpstream()
    async with gateway_before(upstream, tmp_path, demo_base) as gw:
        async with gw.client.stream(
            "POST",
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {gw.key}"},
            json={
                "model": "demo-base",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        ) as response:
            assert response.status_code == 200
            completion_id = response.headers["x-flywheel-completion-id"]
            async for line in response.aiter_lines():
                if "Hello" in line:
                    break  # leaving the block closes the connection mid-stream
        await asyncio.wait_for(upstream.caller_left.wait(), timeout=10)
        assert await gw.state.completions.flush(timeout=10)
        async with gw.state.db.session() as session:
            row = (
                await session.execute(select(Completion).where(Completion.id == completion_id))
            ).scalar_one()
        assert (row.status, row.error_type) == ("cancelled", "client_disconnected")
        assert row.response_text == "Hello"


async def test_a_client_that_gives_up_on_a_non_streamed_answer_stops_the_generation(
    tmp_path: Path, demo_base: Path
) -> None:
    """The embedded engine over real sockets: a client times out on a long non-streamed
    generation; the gateway notices the hang-up, stops the engine, and logs (and charges) the
    call as cancelled with the tokens it made, not the 2,000 it would have.  A stream cut
    short likewise keeps its running token count."""
    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}", demo_base, max_tokens_limit=4096
    )
    app = create_app(settings)
    async with serve_on_socket(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
        state: AppState = app.state.flywheel
        tenant = await seed_tenant(state.db, settings, "patient", {})
        auth = {"authorization": f"Bearer {tenant.key}"}
        body = {
            "model": "demo-base",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2000,
            "min_tokens": 2000,  # no early end-of-sequence: only the hang-up can stop it
            "temperature": 0,
        }
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=body, headers=auth, timeout=1.0)
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=auth
        ) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen > 20:
                    break  # hang up mid-stream
        # The non-streamed one is logged once the engine has stopped for it.
        rows: list[Completion] = []
        for _ in range(200):
            assert await state.completions.flush(timeout=10)
            async with state.db.session() as session:
                rows = list(
                    (
                        await session.scalars(
                            select(Completion).where(Completion.tenant_id == tenant.id)
                        )
                    ).all()
                )
            if len(rows) == 2:
                break
            await asyncio.sleep(0.05)  # polling the log for the row, not synchronising
    assert len(rows) == 2, rows
    for row in rows:
        assert (row.status, row.error_type) == ("cancelled", "client_disconnected")
        assert 0 < row.completion_tokens < 2000, row.completion_tokens
