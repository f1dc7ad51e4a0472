"""Browser feedback from the gateway's own origin (the console's playground), on SQLite and
PostgreSQL: a feedback token is accepted from exactly the scheme and Host the request came to,
though the tenant lists no origin; any other origin, scheme or port is still a 403.

The in-process client speaks to ``http://flywheel``, so that is the gateway's own origin here;
a browser sets Origin and Host itself, which is what the test sends by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.core.tenants import update_tenant
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

OWN = "http://flywheel"


@dataclass
class Env:
    client: httpx.AsyncClient
    tenant: SeededTenant


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    fresh_database_url: str, demo_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path_factory.mktemp("sameorigin"), fresh_database_url, demo_base)
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        t = await seed_tenant(db, settings, "acme", {})
        async with db.transaction() as session:
            await update_tenant(session, "acme", cors_origins=["https://app.acme.example"])
        yield Env(client, t)


async def completion(env: Env) -> tuple[str, str]:
    body = {"model": "demo-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = await env.client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {env.tenant.key}"}
    )
    assert r.status_code == 200, r.text
    return r.json()["id"], r.headers["x-flywheel-feedback-token"]


async def test_the_gateways_own_origin_may_send_browser_feedback(env: Env) -> None:
    cid, token = await completion(env)
    bearer = {"Authorization": f"Bearer {token}"}
    item = {"completion_id": cid, "rating": "up", "end_user": "console-playground"}
    ok = await env.client.post("/v1/feedback", json=item, headers={**bearer, "Origin": OWN})
    assert ok.status_code == 200, ok.text
    # Same origin needs no CORS headers, and gets none: nothing is opened to other origins.
    assert "access-control-allow-origin" not in ok.headers
    got = await env.client.get(
        "/v1/feedback", params={"completion_id": cid}, headers={**bearer, "Origin": OWN}
    )
    assert got.status_code == 200 and got.json()["data"][0]["rating"] == "up"
    # The origin is compared with the Host the request came to, not with a fixed name.
    elsewhere = await env.client.post(
        "/v1/feedback", json=item, headers={**bearer, "Origin": OWN, "Host": "other.example"}
    )
    assert elsewhere.status_code == 403
    # The tenant's own origin still works, with its CORS headers.
    app = "https://app.acme.example"
    mine = await env.client.post("/v1/feedback", json=item, headers={**bearer, "Origin": app})
    assert mine.status_code == 200 and mine.headers["access-control-allow-origin"] == app


@pytest.mark.parametrize(
    "origin",
    [
        "https://flywheel",  # another scheme
        "http://flywheel:8080",  # another port
        "http://flywheel.evil.example",
        "http://evil.example",
        "null",
        "*",
    ],
)
async def test_any_other_origin_is_still_refused(env: Env, origin: str) -> None:
    cid, token = await completion(env)
    refused = await env.client.post(
        "/v1/feedback",
        json={"completion_id": cid, "rating": "down"},
        headers={"Authorization": f"Bearer {token}", "Origin": origin},
    )
    assert refused.status_code == 403, refused.text
    # And no preflight opens for it: the gateway's origin never joins the tenants' list.
    pre = await env.client.options(
        "/v1/feedback", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 403
